"""docs/console.png: the console under the demo's load (`scripts/console-screenshot`)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from balancer.fakes.processes import BalancerProcess
from tests.e2e.browser import Console, start_chromium
from tests.e2e.load import Load, chat

OUT = Path(__file__).parents[2] / "docs" / "console.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90, help="of load before the picture")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        balancer = BalancerProcess(Path(tmp), args=["--demo"])
        balancer.start()
        driver = start_chromium(1280, 800)
        try:
            with Load(balancer.url, chat("demo", stream=True), clients=3) as load:
                console = Console(driver, balancer.url).open()
                # A load that grows, so that the sparklines have a shape.
                for _ in range(3):
                    time.sleep(args.seconds / 4)
                    load.add_clients(3)
                time.sleep(args.seconds / 4)
                console.row("demo", console.wait(lambda: next(iter(console.rows("demo")), None)))
                driver.save_screenshot(str(args.out))
            print(f"{args.out}: {len(load.statuses)} requests during the picture's load")
        finally:
            driver.quit()
            balancer.stop()


if __name__ == "__main__":
    main()
