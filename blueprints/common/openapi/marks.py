"""What decorators leave on a view for the document (attribute names on view functions).

Marks, not APIFlask's `_spec`: `@bp.doc(...)` rewrites every key of `_spec` (security=None
too), so a `doc` placed above a guard would erase what the guard said.
"""

from __future__ import annotations

from typing import Final

SECURITY_MARK: Final = "documented_security"  # blueprints.common.auth: the security list
SCOPE_MARK: Final = "documented_scope"  # blueprints.common.auth: an API key's named scope
OPERATORS_MARK: Final = "documented_operators_only"  # blueprints.common.auth: admin_required
IDEMPOTENCY_MARK: Final = "idempotency_key"  # blueprints.common.idempotency: key required?
OPERATION_MARK: Final = "documented_operation"  # operations.operation_doc: fields to merge
