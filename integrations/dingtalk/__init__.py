"""DingTalk (钉钉) internal-app robot: HTTP-mode webhook parsing and an async aiohttp client.

See shared/research/platforms.md §3. Stream mode (dingtalk-stream, wrapped) is not built yet.
"""
