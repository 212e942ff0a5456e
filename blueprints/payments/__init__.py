from blueprints.payments.views import bp, webhooks_bp

__all__ = ["bp", "webhooks_bp"]
