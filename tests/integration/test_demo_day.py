"""``pandian demo``: the scripted day runs through the real server and the WeCom sandbox and ends with the
book adjusted. The transcript is what the README promises a new user will see."""

from __future__ import annotations

from datetime import date
from typing import Any

from bot.demo_day import play
from core.config import Settings
from tests.clock import FixedClock, local


async def test_the_demo_day_plays_to_an_adjustment(database_url: str, engine: Any, tmp_path: Any) -> None:
    settings = Settings(
        database_url=database_url,
        server={"photos_dir": str(tmp_path / "photos"), "payload_secret_file": str(tmp_path / "secret")},
    )  # fmt: skip
    t = await play(settings, clock=FixedClock(local(date(2026, 11, 30), 6)), items=400)  # a working Monday
    text = "\n".join(t.lines)
    assert "【卡片】今日盘点任务" in text and "[开始盘点]" in text  # the morning push
    assert "无法识别“abc”" in text  # bad input gets the parser's message
    assert "已确认 库位" in text  # the photo's barcode matched the task's item
    assert "【卡片】复盘请求" in text and "【卡片】差异待复核" in text and "【卡片】差异待审批" in text
    assert "【卡片已更新】差异已复核" in text and "【卡片已更新】差异已通过" in text
    assert "盘点日报" in text
    # on this pinned day: the reviewed variance and one within tolerance are adjusted, one document each
    # (the demo is the same day after day for the same clock; it no longer follows the day the suite runs)
    assert "库存调整单：2" in text and "已调整库存 2" in text and "adjusted" not in text.split("今日结果")[1]
    # blind: the recount card never carries the book quantity or the first count
    recount = next(line for line in t.lines if "【卡片】复盘请求" in line)
    assert "账面" not in recount and "初盘" not in recount
