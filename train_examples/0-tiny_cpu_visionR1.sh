#!/usr/bin/env bash
# The tiny CPU recipe with the self-reward off (format + accuracy reward on the same
# description/think/boxed format): the comparison run for 0-tiny_cpu_selfReward.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
VARIANT=visionR1 exec bash "$(dirname "$0")/0-tiny_cpu_selfReward.sh" "$@"
