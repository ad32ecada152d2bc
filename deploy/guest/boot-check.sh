#!/usr/bin/env bash
# Proves a lab guest image boots: runs its kernel and initrd under bare QEMU (TCG, no libvirt) on a
# throwaway overlay of its disk, and waits for the boot marker and two counter lines on the serial
# console. Exits 0 and prints the timings when they appear, 1 (with the console log) otherwise.
#
# Usage: boot-check.sh [IMAGE_DIR] [TIMEOUT_S]
#        (defaults: $HOME/.cache/vmflow/images/lab-guest, 60)
set -euo pipefail

readonly MEMORY_MIB=128 # 64 MiB does not boot this kernel
readonly COUNTER_LINES_WANTED=2
readonly POLL_INTERVAL_S=0.05

image_dir=${1:-$HOME/.cache/vmflow/images/lab-guest}
timeout_s=${2:-60}
work=$(mktemp -d)
qemu_pid=""

# Only ever stops the QEMU this script started.
cleanup() {
    if [[ -n $qemu_pid ]]; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

image_field() { sed -n "s/^ *\"$1\": *\"\([^\"]*\)\".*/\1/p" "$image_dir/image.json"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
seconds() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }

start_guest() {
    # The overlay keeps the shared base disk untouched, as a real VM's disk would.
    qemu-img create -q -f qcow2 -F qcow2 -b "$image_dir/$(image_field disk)" "$work/overlay.qcow2"
    qemu-system-x86_64 -accel tcg -m "$MEMORY_MIB" -nographic \
        -kernel "$image_dir/$(image_field kernel)" -initrd "$image_dir/$(image_field initrd)" \
        -append "$(image_field cmdline)" \
        -drive "file=$work/overlay.qcow2,if=virtio" \
        -serial "file:$work/console.log" -display none -no-reboot \
        </dev/null >"$work/qemu.out" 2>&1 &
    qemu_pid=$!
}

fail() {
    echo "boot-check: $*" >&2
    echo "--- console log ---" >&2
    cat "$work/console.log" >&2 2>/dev/null || true
    echo "--- qemu output ---" >&2
    cat "$work/qemu.out" >&2 2>/dev/null || true
    exit 1
}

main() {
    local marker started_ms deadline_ms marker_ms="" counters
    marker=$(image_field boot_marker)
    [[ -n $marker ]] || fail "no boot_marker in $image_dir/image.json"
    started_ms=$(now_ms)
    deadline_ms=$((started_ms + timeout_s * 1000))
    start_guest
    while true; do
        kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited early"
        # The guest's tty turns each \n into \r\n: compare lines without the \r.
        if [[ -f $work/console.log ]]; then
            tr -d '\r' <"$work/console.log" >"$work/console.txt"
        fi
        if [[ -z $marker_ms ]] && grep -qx "$marker" "$work/console.txt" 2>/dev/null; then
            marker_ms=$(($(now_ms) - started_ms))
        fi
        counters=$(grep -c '^vmflow-counter [0-9]*$' "$work/console.txt" 2>/dev/null || true)
        if [[ -n $marker_ms && ${counters:-0} -ge $COUNTER_LINES_WANTED ]]; then
            break
        fi
        (($(now_ms) < deadline_ms)) || fail "no $marker and $COUNTER_LINES_WANTED counter lines within ${timeout_s} s"
        sleep "$POLL_INTERVAL_S"
    done
    echo "lab-guest booted under TCG: $marker after $(seconds "$marker_ms") s," \
        "$COUNTER_LINES_WANTED counter lines after $(seconds $(($(now_ms) - started_ms))) s"
    echo "--- console log (without firmware noise) ---"
    grep -e '^vmflow-' -e "^$marker\$" "$work/console.txt"
}

main "$@"
