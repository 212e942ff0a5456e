from blueprints.me.views import bp

__all__ = ["bp"]
