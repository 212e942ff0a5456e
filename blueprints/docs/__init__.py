from blueprints.docs.views import bp

__all__ = ["bp"]
