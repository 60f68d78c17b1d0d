#!/usr/bin/env bash
# Entry point of the perception-nodes image: sources ROS 2 and the colcon workspace, then runs the
# command, so `docker run IMAGE ros2 launch perception_bringup perception.launch.py` finds the package
# (a non-interactive shell never reads /etc/bash.bashrc). Default command: bash.
#
# Network: discovery stays on this host unless ROS_AUTOMATIC_DISCOVERY_RANGE says otherwise (pass
# -e ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET on a vehicle whose sensors are on other hosts). Humble, the Jetson
# image's distro, predates that variable and reads ROS_LOCALHOST_ONLY instead, set here to match.
# ROS_DOMAIN_ID is left to the caller (-e ROS_DOMAIN_ID=N; ROS's default is 0).
ros_setup="${PN_ROS_SETUP:-/opt/ros/${ROS_DISTRO:?ROS_DISTRO is not set}/setup.bash}"
ws_setup="${PN_WS_SETUP:-/opt/perception_nodes/ros_ws/install/setup.bash}"
for f in "$ros_setup" "$ws_setup"; do
  if [ ! -f "$f" ]; then
    echo "entrypoint: $f not found" >&2
    exit 1
  fi
  # shellcheck disable=SC1090
  . "$f"
done
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
if [ "${ROS_DISTRO:-}" = humble ] && [ "$ROS_AUTOMATIC_DISCOVERY_RANGE" = LOCALHOST ]; then
  export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}"
fi
[ "$#" -gt 0 ] || set -- bash
exec "$@"
