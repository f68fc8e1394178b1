"""Integrations with web frameworks: ``fmredis.contrib.django`` (a session engine) and ``fmredis.contrib.flask`` (a
session interface), both on the framework-neutral :mod:`fmredis.contrib.web`. Each needs its framework installed
(``pip install fmredis[django]`` or ``fmredis[flask]``); nothing here is imported by ``import fmredis``."""
