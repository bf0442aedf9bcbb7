"""Feishu (飞书 / Lark): webhook (verify, decrypt, parse into neutral events) and an async API client.

Nothing here imports ``lark_oapi`` at module level: that SDK costs ~4 s and ~175 MB to import, and an
unconfigured platform must cost nothing. See ``webhook.py`` and ``client.py`` for why each is written
without it.
"""
