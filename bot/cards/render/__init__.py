"""Pure renderers: ``render(card, *, lang, signer) -> dict`` for WeCom, Feishu and DingTalk."""
