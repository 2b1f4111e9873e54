# Shared by scripts/compare and scripts/ab (sourced, not run): the helpers that drive
# the systemd lab's guests (vm-images/lab up --systemd), fio in the master guest with
# the host CPU each guest's QEMU spends, and the setup of the two stacks side by side:
# DRBD 8.4 on /dev/vdd (+ Heartbeat for the cluster), hablock from its .deb on
# /dev/vdb with the example config.
# The caller sets: me (its name, for messages), lab (vm-images/lab), work (a scratch
# directory), runtime (fio seconds per job), and for the *_start_cluster functions vip
# (the cluster's address).

fail() { echo "$me: FAILED: $*" >&2; $lab logs >&2 || true; exit 1; }
x() { local out; out=$($lab exec "$1" -- "$2" 2>&1) || fail "on $1: $2 -> $out"; printf '%s' "$out"; }
q() { $lab exec "$1" -- "$2" >/dev/null 2>&1; } # a guest predicate
now_ms() { date +%s%3N; }
log() { echo "$me: $*" >&2; }
until_true() { # SECONDS WHAT CMD...: polls CMD every 0.2 s
  local secs=$1 what=$2 i; shift 2
  for i in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "timed out after ${secs}s waiting for $what"
}
# Host CPU time (clock ticks) used so far by each guest's QEMU: "master slave".
qemu_ticks() {
  local n
  for n in master slave; do awk '{printf "%d ", $14 + $15}' "/proc/$(cat vm-images/out/lab/$n.pid)/stat"; done
}

# fio_run DEVICE JOB -> "iops bw_MBps lat_us master_cpu slave_cpu": the last two are
# the host CPU milliseconds each guest used per MB written (seq) or per 1000 writes
# (qd1, qd32), counting the ramp-up second as fio's rate.
fio_run() {
  local args before after
  case $2 in
    qd1) args="--rw=randwrite --bs=4k --iodepth=1" ;;
    qd32) args="--rw=randwrite --bs=4k --iodepth=32" ;;
    seq) args="--rw=write --bs=1M --iodepth=4" ;;
  esac
  before=$(qemu_ticks)
  x master "fio --name=cmp --output-format=json --ioengine=io_uring --direct=1 --filename=$1 --size=64M --time_based --runtime=$runtime --ramp_time=1 --randrepeat=0 $args" >"$work/fio.json"
  after=$(qemu_ticks)
  python3 - "$work/fio.json" "$2" "$runtime" "$(getconf CLK_TCK)" $before $after <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]["write"]
job, secs, tck = sys.argv[2], int(sys.argv[3]) + 1, int(sys.argv[4])
m0, s0, m1, s1 = map(int, sys.argv[5:9])
units = j["bw"] / 1024 * secs if job == "seq" else j["iops"] * secs / 1000
cpu = [(b - a) * 1000 / tck / units if units else float("nan") for a, b in ((m0, m1), (s0, s1))]
print(f'{j["iops"]:.0f} {j["bw"] / 1024:.1f} {j["lat_ns"]["mean"] / 1000:.0f} {cpu[0]:.2f} {cpu[1]:.2f}')
PY
}

# --- DRBD 8.4 + Heartbeat ---
drbd_device() { echo /dev/drbd0; }
drbd_setup() {
  cat >"$work/r0.res" <<'EOF'
resource r0 {
  protocol C;
  device /dev/drbd0;
  disk /dev/vdd;
  meta-disk internal;
  net {
    cram-hmac-alg sha1;
    shared-secret "hablock-compare";
    after-sb-0pri discard-zero-changes;
    after-sb-1pri discard-secondary;
    after-sb-2pri disconnect;
    connect-int 1;
    ping-int 1;
  }
  disk { resync-rate 100M; c-plan-ahead 0; }
  on master { address 10.213.1.2:7788; }
  on slave { address 10.213.1.3:7788; }
}
EOF
  for n in master slave; do
    $lab cp "$n" "$work/r0.res" /etc/drbd.d/r0.res >/dev/null
    x "$n" 'modprobe drbd; yes yes | drbdadm create-md --force r0 >/dev/null 2>&1; drbdadm up r0' >/dev/null
  done
  until_true 60 "DRBD to connect" q master 'grep -q "cs:Connected" /proc/drbd'
  x master 'drbdadm primary --force r0' >/dev/null
  until_true 300 "DRBD's initial sync" drbd_in_sync
}
drbd_disconnected() { q master '! grep -q "cs:Connected" /proc/drbd'; }
drbd_in_sync() { q master 'grep -q "cs:Connected.*ds:UpToDate/UpToDate" /proc/drbd'; }
drbd_start_cluster() {
  x master 'mkfs.ext4 -q -F /dev/drbd0 && mount /dev/drbd0 /srv && mkdir -p /srv/www && echo web >/srv/www/index.html && umount /srv && drbdadm secondary r0' >/dev/null
  cat >"$work/haresources" <<EOF
master IPaddr2::$vip/24/eth0 drbddisk::r0 Filesystem::/dev/drbd0::/srv::ext4 webserver
EOF
  printf 'auth 1\n1 sha1 hablock-compare\n' >"$work/authkeys"
  cat >"$work/webserver" <<EOF
#!/bin/sh
# busybox httpd serving /srv/www on the VIP, as a Heartbeat resource script.
case "\$1" in
  start) busybox httpd -p $vip:80 -h /srv/www ;;
  stop) pkill -f "busybox httpd -p $vip:80"; exit 0 ;;
  status) if pgrep -f "busybox httpd -p $vip:80" >/dev/null; then echo running; else echo stopped; exit 3; fi ;;
esac
EOF
  local n p0 p1
  for n in master slave; do
    if [ $n = master ]; then p0=10.213.0.152 p1=10.213.1.3; else p0=10.213.0.151 p1=10.213.1.2; fi
    cat >"$work/ha.cf" <<EOF
keepalive 500ms
warntime 2
deadtime 3
initdead 10
udpport 694
ucast eth0 $p0
ucast eth1 $p1
auto_failback on
node master
node slave
crm off
logfile /var/log/ha-log
EOF
    $lab cp "$n" "$work/ha.cf" /etc/ha.d/ha.cf >/dev/null
    $lab cp "$n" "$work/authkeys" /etc/ha.d/authkeys >/dev/null
    $lab cp "$n" "$work/haresources" /etc/ha.d/haresources >/dev/null
    $lab cp "$n" "$work/webserver" /etc/ha.d/resource.d/webserver >/dev/null
    x "$n" 'chmod 600 /etc/ha.d/authkeys && chmod 755 /etc/ha.d/resource.d/webserver && systemctl start heartbeat' >/dev/null
  done
}

# --- hablock ---
hablock_device() { echo /dev/ublkb0; }
hablock_setup() {
  for n in master slave; do
    x "$n" 'dpkg -i /var/cache/hablock/hablock_*.deb >/dev/null 2>&1 && blockctl create-md --force r0 >/dev/null && systemctl start blockd' >/dev/null
  done
  until_true 60 "hablock to connect" q master 'blockctl status --json r0 | grep -q "\"connection\": \"Connected\""'
  x master 'blockctl primary --force r0 2>/dev/null' >/dev/null
  until_true 300 "hablock's initial sync" hablock_in_sync
}
hablock_disconnected() { q master '! blockctl status --json r0 | grep -q "\"peer_role\": \"Secondary\""'; }
hablock_in_sync() { q master 'blockctl status --json r0 | grep -q "\"peer_disk\": \"UpToDate\"" && blockctl status --json r0 | grep -q "\"out_of_sync_bytes\": 0,"'; }
hablock_start_cluster() {
  x master 'mkfs.ext4 -q -F /dev/ublkb0 && mount /dev/ublkb0 /srv && mkdir -p /srv/www && echo web >/srv/www/index.html && umount /srv && blockctl secondary r0' >/dev/null
  for n in master slave; do x "$n" 'systemctl start clusterd' >/dev/null; done
}
