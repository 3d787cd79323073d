"""What the HTTP layer shares: exceptions as answers, ETags, redacted validation errors."""
