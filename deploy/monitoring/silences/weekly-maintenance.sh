#!/bin/sh
# The manual's maintenance silence (Silencing and Maintenance): every alert of module alpha
# during the Sunday window. Usage: weekly-maintenance.sh START END [ALERTMANAGER_URL]
#   e.g. weekly-maintenance.sh 2024-01-15T02:00:00Z 2024-01-15T06:00:00Z
set -eu
exec amtool silence add module=alpha \
  --alertmanager.url="${3:-http://127.0.0.1:9093}" \
  --start="$1" --end="$2" \
  --author="ops-team" --comment="Weekly maintenance window"
