#!/usr/bin/env python
"""The example Django project's manage.py, runnable from any directory:

REDIS_URL=redis://127.0.0.1:6379/0 python examples/django_app/manage.py runserver    # http://127.0.0.1:8000

curl -c jar -b jar -X POST http://127.0.0.1:8000/incr/visits           # {"visits": 1}
curl -c jar -b jar -X POST -d user_id=42 http://127.0.0.1:8000/login  # a new session key, same data
curl -c jar -b jar http://127.0.0.1:8000/session
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # settings.py and urls.py sit next to this file
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
