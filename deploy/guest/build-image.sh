#!/usr/bin/env bash
# Build the tiny lab guest image: a Debian cloud kernel, a busybox initramfs and an empty qcow2 base
# disk. The guest's /init takes its hostname and instance id from a NoCloud seed disk (label cidata)
# when there is one, runs DHCP on every virtio NIC (also hot-plugged ones), answers HTTP on port 80
# with its instance id and swallows TCP on port 5001 (throughput tests), prints a boot marker, and
# then keeps a root shell on ttyS0 (the interactive console) and prints a counter every second on
# ttyS1 (ttyS0 when the machine has no second port). The counter is what tests watch to prove a
# guest kept running (e.g. across a live migration). Lines for the platform start with vmflow-.
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
# Load order matters: insmod resolves no dependencies, so each module follows the ones it needs
# (copy_modules checks that against each module's own list). virtio_blk for the disks, virtio_net
# (needs net_failover, which needs failover) for the NICs, isofs (needs cdrom) to read the seed;
# af_packet, which udhcpc needs, is built into Debian's kernel and skipped, like any built-in one.
readonly GUEST_MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
    failover net_failover virtio_net af_packet cdrom isofs
)
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

# Is $2 compiled into the kernel unpacked at $1? Then there is no .ko to load.
module_is_builtin() {
    local kernel_root=$1 module=$2
    # A dependency is named with underscores even where its file name has dashes.
    grep -qE "/${module//_/[-_]}\.ko$" "$kernel_root"/lib/modules/*/modules.builtin
}

# The modules a plain .ko needs, one a line: its .modinfo section holds "depends=a,b".
module_dependencies() {
    local ko=$1 depends
    depends=$(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p')
    depends=${depends%%$'\n'*}
    [[ -z $depends ]] || tr ',' '\n' <<<"$depends"
}

# Copies the modules of GUEST_MODULES that exist as files into $2 as plain .ko, and writes
# $2/load-order for /init. busybox insmod cannot read compressed modules, so decompress here. A
# module that a later kernel makes depend on one not loaded before it stops the build here, rather
# than failing to load in every guest.
copy_modules() {
    local kernel_root=$1 dest=$2 module path dependency
    mkdir -p "$dest"
    : >"$dest/load-order"
    for module in "${GUEST_MODULES[@]}"; do
        if module_is_builtin "$kernel_root" "$module"; then
            log "module $module is built into the kernel; nothing to load"
            continue
        fi
        path=$(find "$kernel_root/lib/modules" -name "$module.ko*" -print -quit)
        [[ -n $path ]] || die "module $module is neither built in nor shipped in the kernel package"
        case $path in
            *.ko) cp "$path" "$dest/$module.ko" ;;
            *.ko.xz) xz -dc "$path" >"$dest/$module.ko" ;;
            *.ko.zst) zstd -qdc "$path" >"$dest/$module.ko" ;;
            *) die "unknown module compression: $path" ;;
        esac
        while read -r dependency; do
            grep -qx "$dependency" "$dest/load-order" || module_is_builtin "$kernel_root" "$dependency" ||
                die "module $module needs $dependency: add it to GUEST_MODULES before $module"
        done < <(module_dependencies "$dest/$module.ko")
        echo "$module" >>"$dest/load-order"
    done
}

# Shell functions shared by /init and the DHCP script.
write_guest_functions() {
    local dest=$1
    cat >"$dest" <<'EOF'
# Sourced by /init and /etc/udhcpc.script of the vmflow lab guest.

# One line for the platform on the console (ttyS0), which reads the lines starting with vmflow-.
# The port is opened for each line: a descriptor kept open goes dead when the console shell's
# session ends (the kernel hangs the tty up). Once that shell runs, its prompt may hold the cursor
# mid-line, so a line then starts on a fresh one: one message a line in the console's log.
# echo, not printf: printf runs inside the calling shell and, its stdout being a tty, makes that
# shell's stdio line-buffered; every applet it forks later inherits that (dirty_memory's head then
# writes 48 MiB in 36-byte lines, 2-3 times slower under TCG).
say() {
    if [ -e /run/vmflow/shell-started ]; then
        echo "
$*" >/dev/ttyS0
    else
        echo "$*" >/dev/ttyS0
    fi
}
EOF
}

# udhcpc runs this on each DHCP event; it configures the interface from the lease.
write_udhcpc_script() {
    local dest=$1
    cat >"$dest" <<'EOF'
#!/bin/sh
# udhcpc calls this with the event in $1 and the lease in the environment: interface, ip, mask
# (a prefix length), router, dns, domain and mtu (when the server sent them).
. /lib/vmflow/functions.sh

has_address() {
    ip -4 addr show dev "$interface" | grep -q " inet $ip/$mask "
}

# One default route per interface, the metric its index: with several NICs the first one's wins,
# and a NIC's route goes with its address, without touching the others'.
set_default_route() {
    read -r ifindex <"/sys/class/net/$interface/ifindex"
    ip route replace default via "${router%% *}" dev "$interface" metric "$ifindex"
}

write_resolv_conf() {
    {
        [ -n "$domain" ] && echo "search $domain"
        for server in $dns; do
            echo "nameserver $server"
        done
    } >/etc/resolv.conf
}

case $1 in
    deconfig)
        ip link set dev "$interface" up
        ip -4 addr flush dev "$interface"
        ;;
    bound | renew)
        # A renewal of the same lease leaves the address alone: flushing it would drop the routes.
        if [ "$1" = bound ] || ! has_address; then
            ip -4 addr flush dev "$interface"
            ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
            changed=1
        fi
        [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
        [ -n "$router" ] && set_default_route
        [ -n "$dns" ] && write_resolv_conf
        [ -n "$changed" ] && say "vmflow-net $interface $ip/$mask"
        ;;
esac
exit 0
EOF
    chmod 755 "$dest"
}

# Read by every interactive shell through ENV, the console's shell among them.
write_profile() {
    local dest=$1
    cat >"$dest" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
export PS1='\h:\w# '
cd "$HOME"
EOF
}

# nc runs this for each connection to port 5001: it swallows what the peer sends until the peer
# closes, so the peer can time how fast it sent (dd ... | nc GUEST 5001).
write_tcp_sink() {
    local dest=$1
    cat >"$dest" <<'EOF'
#!/bin/sh
exec cat >/dev/null
EOF
    chmod 755 "$dest"
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
. /lib/vmflow/functions.sh

# The port for the guest's own lines (counter, dirtied memory): ttyS1 when the machine has one, so
# they stay out of the interactive shell on ttyS0. A port without hardware behind it still has a
# /dev node, but its type is 0 (unknown).
ttyS1_type=0
[ -r /sys/class/tty/ttyS1/type ] && read -r ttyS1_type </sys/class/tty/ttyS1/type
if [ "$ttyS1_type" != 0 ]; then
    log_port=/dev/ttyS1
else
    log_port=/dev/ttyS0
fi
log_line() {
    if [ "$log_port" = /dev/ttyS0 ]; then
        say "$*"
    else
        echo "$*" >"$log_port"
    fi
}
# The initramfs has no /dev/console node, so the kernel started us without stdio. Tools' own
# messages go to the log port (to ttyS0 only until its first hangup, when there is no ttyS1).
exec </dev/null >"$log_port" 2>&1

# Waits about a second without starting a process: a sleep a second in each loop would be most of
# what an idle guest costs under TCG. A read from a FIFO nobody writes to just times out.
exec 9<>/run/vmflow/tick
wait_a_second() {
    read -t 1 tick <&9
}

# Firmware leaves escape sequences without a newline on the console: start our lines on a fresh one.
say ""

while read -r module; do
    insmod "/lib/modules/$module.ko" || say "vmflow-guest: insmod $module failed"
done </lib/modules/load-order

# Each virtio block device (virtio id 2) on the bus gets its /dev node a moment after virtio_blk
# loads: wait for all of them, the seed disk among them. Until the boot marker, this script sticks
# to shell builtins where it can: under TCG every command started costs tens of milliseconds.
wait_for_disks() {
    disks=0
    for device in /sys/bus/virtio/devices/*/device; do
        if [ -f "$device" ] && read -r id <"$device" && [ "$id" = 0x0002 ]; then
            disks=$((disks + 1))
        fi
    done
    tries=0
    while [ "$tries" -lt 50 ]; do
        set -- /dev/vd[a-z]
        if [ -b "$1" ] && [ "$#" -ge "$disks" ] || [ "$disks" = 0 ]; then
            break
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
}
wait_for_disks
if [ -b /dev/vda ]; then
    say "vmflow-disk vda present"
fi

# Sets instance_id and wanted_name from the top-level "key: value" lines of a meta-data file
# (YAML as cloud-init's NoCloud reads it; values may be quoted, lines may end in CR LF).
parse_meta_data() {
    while IFS= read -r line || [ -n "$line" ]; do
        value=${line#*:}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        case $value in
            \"*\" | \'*\') value=${value#?} && value=${value%?} ;;
        esac
        case $line in
            instance-id:*) instance_id=$value ;;
            local-hostname:*) wanted_name=$value ;;
        esac
    done <"$1"
}

# A NoCloud seed is an ISO9660 disk labelled cidata (cloud-init accepts CIDATA too). Its files are
# copied to /run/vmflow/seed/ and the disk unmounted: nothing keeps it busy.
read_seed() {
    seed=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null) || return 1
    if ! mount -t iso9660 -o ro "$seed" /mnt/seed; then
        say "vmflow-guest: cannot mount the seed $seed"
        return 1
    fi
    set --
    for file in meta-data user-data network-config; do
        if [ -f "/mnt/seed/$file" ]; then
            set -- "$@" "/mnt/seed/$file"
        fi
    done
    [ "$#" = 0 ] || cp "$@" /run/vmflow/seed/
    umount /mnt/seed
    say "vmflow-seed ${seed#/dev/}"
}

set_hostname() {
    hostname "$1"
    echo "$1" >/etc/hostname
    {
        echo "127.0.0.1 localhost"
        echo "127.0.1.1 $1"
    } >/etc/hosts
    say "vmflow-hostname $1"
}

# Identity: hostname and instance id from the seed's meta-data, defaults without one.
take_identity() {
    name=vmflow-guest
    instance_id=""
    wanted_name=""
    if read_seed; then
        if [ -f /run/vmflow/seed/meta-data ]; then
            parse_meta_data /run/vmflow/seed/meta-data
        fi
    else
        say "vmflow-seed none"
    fi
    case $wanted_name in
        '') ;;
        -* | *[!A-Za-z0-9.-]*) say "vmflow-guest: bad hostname $wanted_name" ;;
        *) name=$wanted_name ;;
    esac
    instance_id=${instance_id:-unknown}
    echo "$instance_id" >/run/vmflow/instance-id
    set_hostname "$name"
}

# A user-data that starts with #! is a script (as for cloud-init): run in the background, its output
# on the console line by line, then its exit status. Once per boot, not once per instance as
# cloud-init does: the guest keeps nothing across boots. An interpreter it lacks (bash) gets sh.
start_user_script() {
    script=/run/vmflow/seed/user-data
    [ -f "$script" ] && read -r shebang <"$script" || return 0
    case $shebang in
        '#!'*) ;;
        *) return 0 ;;
    esac
    set -- ${shebang#??}
    if [ -x "$1" ]; then
        set -- /run/vmflow/user-script
    else
        set -- sh /run/vmflow/user-script
    fi
    (
        cp "$script" /run/vmflow/user-script
        chmod 700 /run/vmflow/user-script
        say "vmflow-user-data started"
        { "$@" </dev/null 2>&1; echo $? >/run/vmflow/user-script.status; } |
            while IFS= read -r line; do
                say "vmflow-user-data: $line"
            done
        say "vmflow-user-data exit $(cat /run/vmflow/user-script.status)"
    ) &
}

# DHCP on a NIC, retrying forever in the background: 4 discovers 1 s apart, then a 3 s pause, again.
nic_added() {
    say "vmflow-nic-added $1 $2"
    read -r host </proc/sys/kernel/hostname
    ip link set dev "$1" up
    udhcpc -f -i "$1" -s /etc/udhcpc.script -t 4 -T 1 -A 3 -O mtu -x "hostname:$host" \
        </dev/null >/dev/null 2>&1 &
    echo $! >"/run/vmflow/udhcpc.$1.pid"
}

nic_removed() {
    say "vmflow-nic-removed $1"
    if read -r pid <"/run/vmflow/udhcpc.$1.pid"; then
        kill "$pid"
    fi
    rm -f "/run/vmflow/udhcpc.$1.pid"
}

# Sets nics to "name=mac=ifindex ..." of the ethernet NICs. Builtins only: this runs every second.
scan_nics() {
    nics=""
    for dev in /sys/class/net/eth*; do
        [ -e "$dev/address" ] && read -r mac <"$dev/address" && read -r ifindex <"$dev/ifindex" || continue
        nics="$nics ${dev##*/}=$mac=$ifindex"
    done
}

# Compares the NICs with those seen last time. A NIC under a known name but with another MAC or
# interface index (a new one each time the kernel creates it) is another NIC: removed, then added.
known_nics=""
sync_nics() {
    scan_nics
    for entry in $known_nics; do
        case " $nics " in
            *" $entry "*) ;;
            *) nic_removed "${entry%%=*}" ;;
        esac
    done
    for entry in $nics; do
        case " $known_nics " in
            *" $entry "*) ;;
            *)
                mac=${entry#*=}
                nic_added "${entry%%=*}" "${mac%=*}"
                ;;
        esac
    done
    known_nics=$nics
}

# The NICs present at boot get DHCP now; a loop notices those hot-plugged or unplugged later.
start_network() {
    ip link set dev lo up
    sync_nics
    while true; do
        wait_a_second
        sync_nics
    done &
}

# What peers test the network with: HTTP answering the instance id (wget -qO- http://GUEST/), and
# a TCP sink on port 5001 that takes any number of connections (nc -ll forks one per connection).
start_responders() {
    echo "$instance_id" >/www/index.html
    httpd -p 80 -h /www
    while true; do
        nc -ll -p 5001 -e /lib/vmflow/tcp-sink </dev/null >/dev/null 2>&1
        sleep 1
    done &
}

# The console's root shell, started again whenever it exits. getty makes ttyS0 the shell's
# controlling tty, so Ctrl-C reaches what runs in it.
console_shell() {
    touch /run/vmflow/shell-started
    while true; do
        ENV=/etc/profile getty -n -i -L -l /bin/sh 115200 ttyS0 vt100 </dev/null >/dev/null 2>&1
        sleep 1
    done
}

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
    log_line "vmflow-dirty $mib MiB"
    passes=0
    last=$(date +%s)
    while true; do
        # Read each block and write it back in place: every page of the buffer is written again.
        dd if=/dev/shm/buffer of=/dev/shm/buffer bs=1M conv=notrunc 2>/dev/null
        passes=$((passes + 1))
        now=$(date +%s)
        if [ "$now" != "$last" ]; then
            log_line "vmflow-dirtied-mib $((passes * mib))"
            last=$now
        fi
    done
}

dirty=0
dirty_mib=48
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case $arg in
        vmflow.dirty=1) dirty=1 ;;
        vmflow.dirty_mib=*) dirty_mib=${arg#vmflow.dirty_mib=} ;;
    esac
done

take_identity
start_network
if [ "$dirty" = 1 ]; then
    dirty_memory "$dirty_mib" &
fi

# Exactly once per boot on ttyS0: the platform counts markers there to tell a reboot happened.
# Identity and network come first (DHCP need not have finished); what can wait until after the
# marker does, as on one vCPU under TCG everything started before it delays it.
say "@BOOT_MARKER@"
if [ "$log_port" != /dev/ttyS0 ]; then
    log_line "@BOOT_MARKER@"
fi
start_responders
start_user_script
console_shell &

n=0
while true; do
    n=$((n + 1))
    log_line "vmflow-counter $n"
    wait_a_second
done
EOF
    chmod 755 "$dest"
}

build_initrd() {
    local kernel_root=$1 dest=$2 work=$3 rootfs
    rootfs="$work/initramfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc,root,www,mnt/seed,run/vmflow/seed}
    mkdir -p "$rootfs"/lib/{modules,vmflow}
    mkdir -m 1777 "$rootfs/tmp"
    mkfifo "$rootfs/run/vmflow/tick" # /init's one-second wait
    cp "$(static_busybox_path)" "$rootfs/bin/busybox"
    copy_modules "$kernel_root" "$rootfs/lib/modules"
    write_guest_functions "$rootfs/lib/vmflow/functions.sh"
    write_udhcpc_script "$rootfs/etc/udhcpc.script"
    write_profile "$rootfs/etc/profile"
    write_tcp_sink "$rootfs/lib/vmflow/tcp-sink"
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
  "description": "Tiny lab guest: Debian cloud kernel and a busybox initramfs; hostname and instance id from a NoCloud seed (cidata), DHCP on every virtio NIC (hot-plug too), HTTP on port 80 answering the instance id, a TCP sink on port 5001, $BOOT_MARKER on ttyS0, then a root shell on ttyS0 and a counter every second on ttyS1; empty ${DISK_SIZE_GIB} GiB disk$suffix",
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
