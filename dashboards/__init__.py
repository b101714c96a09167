"""Grafana dashboards for salvage, written as code.

Each module builds one dashboard from the metrics listed in
`dashboards.contract`; `python -m dashboards.generate` writes them to
`dashboards/json/`, which Grafana provisioning loads (deploy/grafana).
"""
