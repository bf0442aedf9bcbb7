"""WeCom (企业微信) self-built application: webhook (verify, decrypt, parse) and the async API channel."""
