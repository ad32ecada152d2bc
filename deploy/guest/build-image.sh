#!/usr/bin/env bash
# Build the tiny lab guest image: a Debian cloud kernel, a busybox initramfs whose /init prints a
# boot marker and then a counter every second on the serial console, and an empty qcow2 base disk.
# The counter is what tests watch to prove a guest kept running (e.g. across a live migration).
# Beside it, the variant lab-guest-dirty: the same files (hard links), booted with vmflow.dirty=1,
# which makes /init keep rewriting a memory buffer (a guest a live migration has to chase).
#
# Usage: build-image.sh [OUTPUT_DIR]     (default: $HOME/.cache/vmflow/images/lab-guest;
#                                          the variant goes to OUTPUT_DIR/../lab-guest-dirty)
#
# Idempotent: when OUTPUT_DIR and the variant already hold images built from the kernel package apt
# resolves today, it prints "lab-guest image up to date" and exits 0. A build happens in staging
# directories next to OUTPUT_DIR, renamed into place, so an interrupted build never leaves a half
# image.
# Needs: apt (the kernel is downloaded, not installed), busybox-static, cpio, qemu-utils.
set -euo pipefail
export LC_ALL=C # apt-cache output is parsed below

readonly IMAGE_NAME=lab-guest
readonly KERNEL_META_PACKAGE=linux-image-cloud-amd64
readonly BOOT_MARKER=VMFLOW-GUEST-BOOTED
readonly KERNEL_CMDLINE='console=ttyS0 panic=-1 quiet'
readonly DIRTY_IMAGE_NAME=lab-guest-dirty
readonly DIRTY_CMDLINE="$KERNEL_CMDLINE vmflow.dirty=1" # /init reads it from /proc/cmdline
readonly DIRTY_MIN_MEMORY_MIB=160 # the kernel's floor plus the 48 MiB buffer /init rewrites
readonly DISK_SIZE_GIB=1
readonly MIN_MEMORY_MIB=96 # this kernel does not boot in 64 MiB; ~72 MiB is the floor
# Load order matters: insmod resolves no dependencies, so each module follows the ones it needs.
readonly VIRTIO_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)
readonly IMAGE_FILES=(vmlinuz initrd.gz disk.qcow2 image.json)
readonly RECIPE_FILE=.recipe-sha256

log() { echo "build-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Temporary directories go when the script exits, on success, error or SIGINT/SIGTERM alike.
TEMP_DIRS=()
remove_on_exit() {
    TEMP_DIRS+=("$1")
    trap 'rm -rf "${TEMP_DIRS[@]}"' EXIT
}

require_tools() {
    local tool
    for tool in apt-cache apt-get dpkg dpkg-query cpio gzip qemu-img flock xz; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install cpio qemu-utils xz-utils)"
    done
    # The plain "busybox" package also ships /bin/busybox, but dynamically linked: useless in an
    # initramfs without libc. Only the busybox-static one will do.
    [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) == "install ok installed" ]] ||
        die "busybox-static is not installed (apt-get install busybox-static)"
}

# Path of the static busybox binary, as the busybox-static package installed it.
static_busybox_path() {
    dpkg-query -L busybox-static | grep -m1 -E '/s?bin/busybox$' || die "busybox-static ships no busybox binary?"
}

# Prints the candidate's dependency on a versioned kernel package, e.g.
# "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", or nothing when apt does not know the package.
# One apt-cache call on purpose: without apt's pkgcache.bin (Debian container images disable it)
# each call costs most of a second, and this is all a warm run does.
kernel_dependency() {
    local depends
    depends=$(apt-cache show --no-all-versions "$KERNEL_META_PACKAGE" 2>/dev/null | sed -n 's/^Depends: //p')
    tr ',' '\n' <<<"$depends" | sed 's/^ *//' | grep -m1 '^linux-image-' || true
}

# Prints "name=version" of the kernel package to use; that form is also what apt-get download takes,
# so the build fetches exactly the version it records.
resolve_kernel_package() {
    local dependency name version
    dependency=$(kernel_dependency)
    if [[ -z $dependency ]]; then
        log "apt knows no $KERNEL_META_PACKAGE yet; running apt-get update"
        apt-get update -qq >&2
        dependency=$(kernel_dependency)
    fi
    [[ -n $dependency ]] || die "cannot resolve the kernel package behind $KERNEL_META_PACKAGE"
    name=${dependency%% *}
    # Debian pins the exact version ("(= 6.1.192-2)"); without a pin, take apt's candidate.
    if [[ $dependency == *"(= "*")" ]]; then
        version=${dependency#*(= }
        version=${version%)}
    else
        version=$(apt-cache policy "$name" | awk '$1 == "Candidate:" { print $2; exit }')
    fi
    [[ -n $version && $version != "(none)" ]] || die "apt has no candidate version of $name"
    echo "$name=$version"
}

# Reads one string field of an image.json this script wrote (flat, one field per line).
json_string_field() {
    local file=$1 key=$2
    sed -n "s/^ *\"$key\": *\"\([^\"]*\)\".*/\1/p" "$file"
}

# Identifies everything besides the kernel that shapes the image: this script (it holds /init) and
# the busybox version. Stored beside image.json, so editing the recipe rebuilds the image instead of
# leaving tests on a stale initrd.
recipe_fingerprint() {
    { cat "${BASH_SOURCE[0]}"; dpkg-query -W -f='${Version}' busybox-static; } | sha256sum | cut -d' ' -f1
}

image_is_current() {
    local dir=$1 kernel_package=$2 file
    for file in "${IMAGE_FILES[@]}"; do
        [[ -s $dir/$file ]] || return 1
    done
    [[ $(json_string_field "$dir/image.json" kernel_package) == "$kernel_package" ]] &&
        [[ $(cat "$dir/$RECIPE_FILE" 2>/dev/null) == "$(recipe_fingerprint)" ]]
}

# Downloads and unpacks the kernel package into $1/root; prints the unpacked root.
unpack_kernel_package() {
    local work=$1 kernel_package=$2 deb
    mkdir -p "$work/download"
    # apt drops to the _apt user to download; let it reach and write here so it keeps its sandbox.
    if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then
        chmod 711 "$work"
        chown _apt "$work/download"
    fi
    log "downloading $kernel_package"
    (cd "$work/download" && apt-get download -qq "$kernel_package" >&2)
    deb=$(find "$work/download" -maxdepth 1 -name '*.deb' -print -quit)
    [[ -n $deb ]] || die "apt-get download produced no .deb"
    dpkg -x "$deb" "$work/root"
    echo "$work/root"
}

copy_kernel() {
    local kernel_root=$1 dest=$2 kernels
    kernels=("$kernel_root"/boot/vmlinuz-*)
    [[ ${#kernels[@]} -eq 1 && -f ${kernels[0]} ]] || die "expected one boot/vmlinuz-* in the kernel package"
    cp "${kernels[0]}" "$dest"
}

# Copies the virtio modules that exist as files (built-in ones do not) into $2 as plain .ko, and
# writes $2/load-order for /init. busybox insmod cannot read compressed modules, so decompress here.
copy_virtio_modules() {
    local kernel_root=$1 dest=$2 module path
    mkdir -p "$dest"
    : >"$dest/load-order"
    for module in "${VIRTIO_MODULES[@]}"; do
        path=$(find "$kernel_root/lib/modules" -name "$module.ko*" -print -quit)
        if [[ -z $path ]]; then
            log "module $module not shipped as a file (built in?); skipping"
            continue
        fi
        case $path in
            *.ko) cp "$path" "$dest/$module.ko" ;;
            *.ko.xz) xz -dc "$path" >"$dest/$module.ko" ;;
            *.ko.zst) zstd -qdc "$path" >"$dest/$module.ko" ;;
            *) die "unknown module compression: $path" ;;
        esac
        echo "$module" >>"$dest/load-order"
    done
}

# The guest's PID 1. It must never exit: the kernel panics when init dies.
write_init() {
    local dest=$1
    sed "s/@BOOT_MARKER@/$BOOT_MARKER/" >"$dest" <<'EOF'
#!/bin/busybox sh
# PID 1 of the vmflow lab guest. Never exits: the kernel panics when init dies.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so the kernel started us without stdio.
exec </dev/null >/dev/ttyS0 2>&1

say() { echo "$*" >/dev/ttyS0; }
# Firmware leaves escape sequences without a newline on the console: start our lines on a fresh one.
say ""

while read -r module; do
    insmod "/lib/modules/$module.ko" || say "vmflow-guest: insmod $module failed"
done </lib/modules/load-order

# A virtio block device (virtio id 2) is on the bus: give its /dev node a moment to appear.
if grep -qx 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    tries=0
    while [ ! -b /dev/vda ] && [ "$tries" -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
fi
if [ -b /dev/vda ]; then
    say "vmflow-disk vda present"
fi

# vmflow.dirty=1 on the kernel command line (the lab-guest-dirty image): keep rewriting a buffer
# of vmflow.dirty_mib MiB in a tmpfs, so that a live migration has to chase dirty pages. Filled
# with text, not zeros: QEMU sends zero pages almost for free. About once a second it prints how
# much it has rewritten so far, which tells how fast it dirties memory.
dirty_memory() {
    mib=$1
    mkdir -p /dev/shm
    mount -t tmpfs -o size=$((mib + 2))m tmpfs /dev/shm
    echo "vmflow dirty page filler, not zeros" >/dev/shm/block
    while [ "$(stat -c %s /dev/shm/block)" -lt 1048576 ]; do
        cat /dev/shm/block /dev/shm/block >/dev/shm/next && mv /dev/shm/next /dev/shm/block
    done
    i=0
    while [ "$i" -lt "$mib" ]; do
        head -c 1048576 /dev/shm/block
        i=$((i + 1))
    done >/dev/shm/buffer
    rm -f /dev/shm/block
    say "vmflow-dirty $mib MiB"
    passes=0
    last=$(date +%s)
    while true; do
        # Read each block and write it back in place: every page of the buffer is written again.
        dd if=/dev/shm/buffer of=/dev/shm/buffer bs=1M conv=notrunc 2>/dev/null
        passes=$((passes + 1))
        now=$(date +%s)
        if [ "$now" != "$last" ]; then
            say "vmflow-dirtied-mib $((passes * mib))"
            last=$now
        fi
    done
}

dirty=0
dirty_mib=48
for arg in $(cat /proc/cmdline); do
    case $arg in
        vmflow.dirty=1) dirty=1 ;;
        vmflow.dirty_mib=*) dirty_mib=${arg#vmflow.dirty_mib=} ;;
    esac
done
if [ "$dirty" = 1 ]; then
    dirty_memory "$dirty_mib" &
fi

say "@BOOT_MARKER@"
n=0
while true; do
    n=$((n + 1))
    say "vmflow-counter $n"
    sleep 1
done
EOF
    chmod 755 "$dest"
}

build_initrd() {
    local kernel_root=$1 dest=$2 work=$3 rootfs
    rootfs="$work/initramfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,lib/modules}
    cp "$(static_busybox_path)" "$rootfs/bin/busybox"
    copy_virtio_modules "$kernel_root" "$rootfs/lib/modules"
    write_init "$rootfs/init"
    # Fixed timestamps, sorted names, root ownership and gzip -n: the same inputs give the same
    # bytes, whoever builds it and whenever.
    find "$rootfs" -exec touch -h -d @0 {} +
    (cd "$rootfs" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
        gzip -9 -n >"$dest"
}

# write_image_json DEST KERNEL_PACKAGE [NAME DESCRIPTION_SUFFIX CMDLINE MIN_MEMORY_MIB]
write_image_json() {
    local dest=$1 kernel_package=$2 name=${3:-$IMAGE_NAME} suffix=${4:-} cmdline=${5:-$KERNEL_CMDLINE}
    local min_memory_mib=${6:-$MIN_MEMORY_MIB}
    cat >"$dest" <<EOF
{
  "name": "$name",
  "description": "Tiny lab guest: Debian cloud kernel and a busybox initramfs that prints $BOOT_MARKER, then a counter every second, on ttyS0; empty ${DISK_SIZE_GIB} GiB disk$suffix",
  "os_type": "linux",
  "kernel": "vmlinuz",
  "initrd": "initrd.gz",
  "cmdline": "$cmdline",
  "disk": "disk.qcow2",
  "min_memory_mib": $min_memory_mib,
  "min_disk_gib": $DISK_SIZE_GIB,
  "boot_marker": "$BOOT_MARKER",
  "kernel_package": "$kernel_package"
}
EOF
}

build_image() {
    local staging=$1 work=$2 kernel_package=$3 kernel_root
    kernel_root=$(unpack_kernel_package "$work" "$kernel_package")
    copy_kernel "$kernel_root" "$staging/vmlinuz"
    build_initrd "$kernel_root" "$staging/initrd.gz" "$work"
    qemu-img create -q -f qcow2 "$staging/disk.qcow2" "${DISK_SIZE_GIB}G"
    recipe_fingerprint >"$staging/$RECIPE_FILE"
    write_image_json "$staging/image.json" "$kernel_package"
}

# The dirty variant: hard links to the files of the image in $1, its own image.json.
build_dirty_variant() {
    local image=$1 staging=$2 kernel_package=$3 file
    for file in vmlinuz initrd.gz disk.qcow2 "$RECIPE_FILE"; do
        ln "$image/$file" "$staging/$file"
    done
    write_image_json "$staging/image.json" "$kernel_package" "$DIRTY_IMAGE_NAME" \
        "; its /init also keeps rewriting a 48 MiB memory buffer (vmflow.dirty=1)" \
        "$DIRTY_CMDLINE" "$DIRTY_MIN_MEMORY_MIB"
}

# Replacing $out removes it, so refuse anything that is not empty or an image named $2.
ensure_replaceable() {
    local out=$1 name=$2
    [[ -e $out ]] || return 0
    [[ -d $out ]] || die "$out exists and is not a directory"
    if [[ -z $(ls -A "$out") ]]; then
        return 0
    fi
    [[ -f $out/image.json && $(json_string_field "$out/image.json" name) == "$name" ]] ||
        die "$out is neither empty nor a $name image; refusing to replace it"
}

# Swaps the finished staging directory in. Running guests keep their open files; a reader sees the
# old complete image or the new one, or (between the two renames) none, never a partial one.
install_image() {
    local staging=$1 out=$2 old
    old="$(dirname "$out")/.$(basename "$out").old.$$"
    if [[ -e $out ]]; then
        mv -T "$out" "$old"
    fi
    mv -T "$staging" "$out"
    rm -rf "$old"
}

file_size() { numfmt --to=iec-i --suffix=B --format=%.1f "$(stat -c %s "$1")"; }

# Seconds since $1 (from date +%s%N), with one decimal.
seconds_since() {
    local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

print_summary() {
    local out=$1 kernel_package=$2 elapsed_s=$3
    echo "$IMAGE_NAME image built in ${elapsed_s} s at $out:" \
        "vmlinuz $(file_size "$out/vmlinuz"), initrd.gz $(file_size "$out/initrd.gz")," \
        "disk.qcow2 $(file_size "$out/disk.qcow2") (${DISK_SIZE_GIB} GiB virtual), kernel $kernel_package;" \
        "$DIRTY_IMAGE_NAME beside it"
}

images_are_current() {
    local out=$1 dirty_out=$2 kernel_package=$3
    image_is_current "$out" "$kernel_package" && image_is_current "$dirty_out" "$kernel_package"
}

main() {
    local out=${1:-$HOME/.cache/vmflow/images/$IMAGE_NAME}
    local started_ns kernel_package parent base dirty_out staging dirty_staging work
    started_ns=$(date +%s%N)
    require_tools
    kernel_package=$(resolve_kernel_package)
    out=$(realpath -m "$out")
    parent=$(dirname "$out")
    base=$(basename "$out")
    dirty_out="$parent/$DIRTY_IMAGE_NAME"
    if images_are_current "$out" "$dirty_out" "$kernel_package"; then
        echo "$IMAGE_NAME image up to date"
        return 0
    fi

    mkdir -p "$parent"
    # Serialise concurrent builders (parallel test workers); the loser finds the image current.
    exec 9>"$parent/.$base.lock"
    flock 9
    if images_are_current "$out" "$dirty_out" "$kernel_package"; then
        echo "$IMAGE_NAME image up to date"
        return 0
    fi
    ensure_replaceable "$out" "$IMAGE_NAME"
    ensure_replaceable "$dirty_out" "$DIRTY_IMAGE_NAME"
    # Under the lock, any staging or old directory left here is from a killed build.
    rm -rf "$parent/.$base.staging."* "$parent/.$base.old."*
    rm -rf "$parent/.$DIRTY_IMAGE_NAME.staging."* "$parent/.$DIRTY_IMAGE_NAME.old."*

    staging=$(mktemp -d "$parent/.$base.staging.XXXXXX")
    remove_on_exit "$staging"
    dirty_staging=$(mktemp -d "$parent/.$DIRTY_IMAGE_NAME.staging.XXXXXX")
    remove_on_exit "$dirty_staging"
    chmod 755 "$staging" "$dirty_staging" # mktemp makes them 0700; images are meant to be readable
    work=$(mktemp -d -t vmflow-lab-guest.XXXXXX)
    remove_on_exit "$work"
    log "building $IMAGE_NAME into $out and $DIRTY_IMAGE_NAME into $dirty_out"
    build_image "$staging" "$work" "$kernel_package"
    build_dirty_variant "$staging" "$dirty_staging" "$kernel_package"
    install_image "$staging" "$out"
    install_image "$dirty_staging" "$dirty_out"
    print_summary "$out" "$kernel_package" "$(seconds_since "$started_ns")"
}

main "$@"
