from blueprints.teams.views import bp, invites_bp

__all__ = ["bp", "invites_bp"]
