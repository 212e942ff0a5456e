"""Reading the business: analytics events, aggregation into rollups, the dashboard, the
scheduled reports and search.

Imports services.messaging and below.
"""
