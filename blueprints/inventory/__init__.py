from blueprints.inventory.views import bp

__all__ = ["bp"]
