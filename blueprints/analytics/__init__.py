from blueprints.analytics.views import bp

__all__ = ["bp"]
