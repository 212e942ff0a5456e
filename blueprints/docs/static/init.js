// Starts Swagger UI on /docs. A file, not an inline script: the page's Content-Security-
// Policy runs scripts from this origin only. The spec's URL comes from the page.
window.addEventListener("load", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    domNode: root,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout",
    // Swagger UI would send the document to validator.swagger.io for a badge.
    validatorUrl: null,
  });
});
