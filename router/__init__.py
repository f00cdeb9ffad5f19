"""The router: a stable/canary reverse proxy with a rollout controller.

Modules: `settings` (the one settings class), `routing` (pure split/stickiness decisions),
`breaker` (circuit breaker), `proxy` (the one module that forwards requests over the network),
`feedback` (served-image memory for online accuracy), `metrics` (the one module defining
Prometheus metrics), `analysis` (pure canary-versus-stable comparison), `sources` (where the
analysis reads metrics from: Prometheus or scraping), `state` (rollout state in the database),
`controller` (the rollout state machine), `admin` (admin API), `app` (wiring), `cli`.
"""
