"""Business logic per domain. Each public function owns one transaction and commits once."""
