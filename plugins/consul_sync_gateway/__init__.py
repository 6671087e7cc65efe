"""The built-in Gateway API plugin: HTTPRoutes and GRPCRoutes for synced services."""
