#!/usr/bin/env bash
# Creates .venv with the pinned dependencies and builds ros_ws with colcon. Idempotent: each step
# re-runs only when its inputs changed. Called by `make setup` (and so by `make demo` / `make test`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${PN_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

req_hash="$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$venv/.installed-$req_hash" ]; then
  echo "==> creating $venv and installing pinned dependencies (first run takes a few minutes)"
  # The pinned set takes about 1.8 GB in the venv, plus pip's unpacking (an update of an existing venv needs less);
  # a full disk otherwise shows up as a torch import error far from its cause. The disk checked is that of the venv
  # or of its nearest existing parent.
  if [ -x "$venv/bin/python" ]; then need_mb="${PN_SETUP_MIN_FREE_MB:-1000}"; else need_mb="${PN_SETUP_MIN_FREE_MB:-3000}"; fi
  probe="$venv"; while [ ! -e "$probe" ]; do probe="$(dirname "$probe")"; done
  # the field before df's "Use%" column: right even when a device or mount name holds spaces
  free_mb="$(df -Pm -- "$probe" 2>/dev/null | awk 'NR == 2 {for (i = 2; i <= NF; i++) if ($i ~ /%$/) {print $(i - 1); exit}}')" \
    || free_mb=""
  case "$free_mb" in
    ''|*[!0-9]*) echo "warning: cannot read the free space on the disk of $probe; installing without the check" >&2
                 free_mb="" ;;
  esac
  if [ -n "$free_mb" ] && [ "$free_mb" -lt "$need_mb" ]; then
    echo "error: only ${free_mb} MB free on the disk of $venv; installing the pinned dependencies needs about" \
         "${need_mb} MB (set PN_SETUP_MIN_FREE_MB to change the check). Free some space and run again." >&2
    exit 1
  fi
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip==25.3 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -m pip install -q -r requirements/base.txt -r requirements/ros.txt -r requirements/test.txt 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -c "import numpy, rosbags, mcap, torch, yaml, hypothesis, perception_nodes" 
  rm -f "$venv"/.installed-*
  touch "$venv/.installed-$req_hash"
fi

# The ros-* wheels' CMake configs name the build farm's Python include and numpy include folders.
# Make those paths exist so colcon can build the interface package against the venv (needs root once;
# harmless on machines with a system ROS install, where these paths are not used).
farm=/opt/python/cp311-cp311
if [ ! -e "$farm/include/python3.11/Python.h" ] || [ ! -e "$farm/lib/python3.11/site-packages/numpy/_core/include" ]; then
  inc="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  npinc="$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')"
  if mkdir -p "$farm/include" "$farm/lib/python3.11/site-packages/numpy/_core" 2>/dev/null; then
    ln -sfn "$inc" "$farm/include/python3.11"
    ln -sfn "$npinc" "$farm/lib/python3.11/site-packages/numpy/_core/include"
  else
    echo "warning: cannot create $farm (not root?); colcon build of the interface package may fail" >&2
  fi
fi

# The bringup package holds real copies of the launch file and the params file (so a colcon build of a copy
# of the package installs them); the originals stay where they are read and edited. Refresh the copies.
bringup=ros_ws/src/perception_bringup
for pair in "launch/perception.launch.py:$bringup/launch/perception.launch.py" \
            "perception_nodes/config/perception.params.yaml:$bringup/config/perception.params.yaml"; do
  src="${pair%%:*}" dst="${pair#*:}"
  if ! cmp -s "$src" "$dst"; then
    echo "==> $dst <- $src"
    mkdir -p "$(dirname "$dst")" && cp "$src" "$dst"
  fi
done

# Stand-in interface packages: ros_ws/src/tf2_msgs, vision_msgs and ackermann_msgs carry upstream's exact
# definitions, for ROS 2 from the ros-* wheels (which lack them). Where a ROS 2 install (sourced before
# this script) or the venv already has the real package, a COLCON_IGNORE keeps colcon off the stand-in
# so the real one is used.
IFS=: read -r -a prefixes <<<"${AMENT_PREFIX_PATH:-}"
for standin in tf2_msgs vision_msgs ackermann_msgs; do
  ignore="ros_ws/src/$standin/COLCON_IGNORE"
  have=""
  for p in "$venv" "${prefixes[@]}"; do
    case "$p" in ""|"$root"/ros_ws/*) continue ;; esac
    # another checkout's stand-in (a shell that sourced its ros_env.sh) is not the real package: skipping
    # ours for it would leave a fresh shell of this checkout without the messages
    [ -f "$p/share/$standin/package.xml" ] && ! cmp -s "$p/share/$standin/package.xml" "ros_ws/src/$standin/package.xml" \
      && have="$p" && break
  done
  if [ -n "$have" ]; then
    [ -f "$ignore" ] || { echo "==> $standin found in $have: not building the stand-in"; touch "$ignore"; }
  else
    rm -f "$ignore"
  fi
done

ws_hash="$(find -L ros_ws/src -type f -not -path '*/__pycache__/*' | sort | xargs cat | sha256sum | cut -c1-16)"
if [ ! -f "ros_ws/install/.built-$ws_hash" ]; then
  echo "==> colcon build ros_ws"
  (
    set +u
    . scripts/ros_env.sh
    cd ros_ws
    rm -rf build install log
    "$venv/bin/colcon" build --event-handlers console_direct- \
      --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF >colcon.log 2>&1 \
      || { tail -50 colcon.log; exit 1; }
  )
  touch "ros_ws/install/.built-$ws_hash"
fi
echo "==> environment ready (. scripts/ros_env.sh to use it in a shell)"
