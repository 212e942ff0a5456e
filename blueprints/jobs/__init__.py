from blueprints.jobs.views import admin_bp, bp

__all__ = ["admin_bp", "bp"]
