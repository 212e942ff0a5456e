from blueprints.ops.views import bp

__all__ = ["bp"]
