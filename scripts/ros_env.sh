# Source this file (bash/sh) to run the project against the venv's ROS 2 wheels and the colcon workspace.
#   . scripts/ros_env.sh
# It is what `make demo`/`make test` use. On a machine with a system ROS 2 install, source
# /opt/ros/<distro>/setup.bash and ros_ws/install/setup.bash instead; this file then only adds the
# loopback-only network settings.
_pn_root="$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." && pwd)"
_pn_venv="${PN_VENV:-$_pn_root/.venv}"
if [ -x "$_pn_venv/bin/python" ]; then
  _pn_sp="$("$_pn_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # The ros-* wheels keep their shared libraries in <venv>/lib and site-packages/ros_*.libs. Setting the
  # path here (and marking the bootstrap done) stops `import rclpy` from re-executing the process.
  _pn_libs="$_pn_venv/lib"
  for d in "$_pn_sp"/ros_*.libs; do [ -d "$d" ] && _pn_libs="$_pn_libs:$d"; done
  export LD_LIBRARY_PATH="$_pn_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
  export AMENT_PREFIX_PATH="$_pn_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$_pn_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PATH="$_pn_venv/bin:$PATH"
fi
# Packages built by colcon in ros_ws (the interface package's generated Python and C libraries).
for _pn_pkg in "$_pn_root"/ros_ws/install/*/; do
  [ -d "$_pn_pkg" ] || continue
  _pn_pkg="${_pn_pkg%/}"
  export AMENT_PREFIX_PATH="$_pn_pkg:$AMENT_PREFIX_PATH"
  [ -d "$_pn_pkg/lib" ] && export LD_LIBRARY_PATH="$_pn_pkg/lib:$LD_LIBRARY_PATH"
  for _pn_py in "$_pn_pkg"/lib/python3*/site-packages; do
    [ -d "$_pn_py" ] && export PYTHONPATH="$_pn_py${PYTHONPATH:+:$PYTHONPATH}"
  done
done
# Network rule: DDS discovery stays on loopback. Domain: what ROS_DOMAIN_ID says when it is set;
# otherwise one per user, 1 + (UID mod 101), so every shell of a user that sources this file (live / play /
# monitor in three terminals) shares a domain, while two users on one host usually do not. 1..101 lies in
# ROS 2's portable range (0..101 on Linux) and avoids 0, where processes that never chose a domain meet.
# To join such processes (e.g. a driver started without this file), export ROS_DOMAIN_ID=0 first.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( 1 + $(id -u) % 101 ))}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _pn_root _pn_venv _pn_sp _pn_libs _pn_pkg _pn_py d
# Large messages on loopback: shared memory segments that fit a whole cloud, UDP on 127.0.0.1 only.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ] && [ -z "${PERCEPTION_NO_FASTDDS_PROFILE:-}" ] && [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." && pwd)/perception_nodes/ros/fastdds/large_data_loopback.xml"
fi
