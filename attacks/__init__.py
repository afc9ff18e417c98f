"""Privacy attacks and audits against privfed pipelines.

Imports only privfed's public API. Gradient inversion, membership inference
and empirical epsilon lower bounds arrive in later issues; this package
exists now so the layout is stable.
"""

__all__: list[str] = []
