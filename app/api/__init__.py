"""HTTP layer: routes, request/response schemas, admin auth and middleware."""
