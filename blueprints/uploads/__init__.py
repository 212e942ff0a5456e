from blueprints.uploads.views import bp

__all__ = ["bp"]
