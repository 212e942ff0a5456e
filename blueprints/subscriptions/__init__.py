from blueprints.subscriptions.views import bp, plans_bp

__all__ = ["bp", "plans_bp"]
