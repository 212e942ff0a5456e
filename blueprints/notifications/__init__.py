from blueprints.notifications.views import bp

__all__ = ["bp"]
