#!/usr/bin/env bash
# Run tests that start processes or wait on events COUNT times each (pytest-repeat), optionally with BUSY
# processes spinning on the CPU, and print pytest's pass/fail counts. Arguments go to pytest.
#   COUNT=20 BUSY=2 tools/loop_tests.sh tests/test_scale_out.py -k "sigkilled or every_worker"
# FRESH=1 runs pytest COUNT times, one process each: for tests whose module fixtures keep state between
# repeats (test_ui.py's browser keeps each experiment's column choice), so every repeat starts as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-20}
busy=${BUSY:-0}
spinners=()
stop_spinners() {
    for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_spinners EXIT
for _ in $(seq 1 "$busy"); do
    python3 -c "while True: pass" &
    spinners+=("$!")
done
echo "loop: ${count} times each, ${busy} busy processes, $(nproc) cores, started $(date -u +%FT%TZ)"
if [[ "${FRESH:-0}" == 1 ]]; then
    passed=0
    for run in $(seq 1 "$count"); do
        if .venv/bin/python -m pytest -p no:cacheprovider -q -ra "$@"; then passed=$((passed + 1)); fi
        echo "loop: run $run, $passed passed so far"
    done
    echo "loop: $passed of $count runs passed"
    [[ "$passed" == "$count" ]]
else
    .venv/bin/python -m pytest --count "$count" -p no:cacheprovider -q -ra "$@"
fi
