"""The healthcare API services the lab operates: gateway, domain services and event workers."""
