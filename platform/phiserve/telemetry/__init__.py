"""OpenTelemetry tracing and Prometheus metrics, PHI-safe."""
