"""Every model, imported here so `Base.metadata` knows all tables (Alembic, tests)."""

from models.analytics import (
    AnalyticsEvent,
    AnalyticsRollup,
    AnalyticsTeamWatermark,
    AnalyticsWatermark,
)
from models.audit import AuditHead, AuditLog
from models.auth import ApiKey, UserSession
from models.base import Base
from models.beat import BeatEntry
from models.export import Export
from models.file import UserFile
from models.idempotency import IdempotencyKey
from models.inventory import InventoryAdjustment, InventoryItem
from models.job import Job
from models.notification import Notification, NotificationPreference
from models.payment import GatewayEvent, Payment, Refund, Subscription
from models.report import Report
from models.search import SearchDocument
from models.team import Team, TeamInvite, TeamMember
from models.user import Setting, User, UserProfile

__all__ = [
    "AnalyticsEvent",
    "AnalyticsRollup",
    "AnalyticsTeamWatermark",
    "AnalyticsWatermark",
    "ApiKey",
    "AuditHead",
    "AuditLog",
    "Base",
    "BeatEntry",
    "Export",
    "GatewayEvent",
    "IdempotencyKey",
    "InventoryAdjustment",
    "InventoryItem",
    "Job",
    "Notification",
    "NotificationPreference",
    "Payment",
    "Refund",
    "Report",
    "SearchDocument",
    "Setting",
    "Subscription",
    "Team",
    "TeamInvite",
    "TeamMember",
    "User",
    "UserFile",
    "UserProfile",
    "UserSession",
]
