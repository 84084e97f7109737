"""Usage: python bench/render_starter_emails.py OUTDIR [true|false]; then sh bench/spam_score.sh OUTDIR/outbox.

Sends every starter email through the real pipeline into OUTDIR/outbox (for SpamAssassin),
with AUTOFUNNEL_TRACK_OPENS as given (default: the product's default, off). The walk is
tests/starter_walk.py's, the one tests/test_spam_score.py judges.
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from starter_walk import write_starter_emails  # noqa: E402

root = Path(sys.argv[1]).resolve()
shutil.rmtree(root, ignore_errors=True)
settings = {"track_opens": sys.argv[2]} if len(sys.argv) > 2 else {}
for path in write_starter_emails(root, f"sqlite:///{root}/af.db", **settings):
    print(path)
