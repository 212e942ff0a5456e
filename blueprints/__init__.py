"""The HTTP edge: one module per API area. Views authenticate, validate, call ONE service
function and shape the response; they never commit or enqueue."""
