"""Runs a :class:`~perception_nodes.graph.node.NodeCore` as a managed (lifecycle) rclpy node.

* **Parameters** are declared with ROS descriptors from :mod:`perception_nodes.config.schema` (type,
  range, description, read-only where a restart is needed). A parameter the schema does not know is an
  error at start; ``set_parameters`` is checked by rclpy (type, range, read-only) and then by the core
  (:meth:`NodeCore.reconfigure`, which applies the change or rejects it with the reason).
* **Lifecycle**: ``configure`` builds the core (calibration, models, JIT warm-up) and the publishers,
  ``activate`` subscribes and starts the tick timer, ``deactivate`` unsubscribes, ``cleanup`` drops the
  core and publishers, ``shutdown`` does whatever is left. With ``autostart`` (default) the node walks
  itself to active; otherwise ``ros2 lifecycle set <node> configure`` etc.
* **Threads**: subscriptions and the tick timer sit in one mutually exclusive callback group per node
  (the core runs on one thread at a time); ``/clock``, parameter and lifecycle services stay in the
  default group, so under a multi-threaded executor sim time advances while a long callback runs and
  stamp-based latencies are measured on a moving clock.
* **In-process handoff**: a topic that another node of the same process consumes is handed to it as
  the message object (no serialize/deserialize) and not subscribed over DDS by that node; it is still
  published on DDS, but only when some outside subscriber is matched (``get_subscription_count``).
  Volatile outputs without any subscriber are not serialized at all; latched ones always are.

The core's clock is the node's ROS clock, so ``use_sim_time`` (with ``/clock`` from
``perception-stack play --clock`` or ``ros2 bag play --clock``) makes pipeline latency sim-time correct.
A message type that is not installed (e.g. ``tf2_msgs`` without ROS or the ros_ws stand-in) disables
that port with a warning.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from perception_nodes.config import ConfigError, flatten, unflatten
from perception_nodes.config.schema import ParamSpec, node_schema
from perception_nodes.graph import NODE_TYPES, NodeCore
from perception_nodes.ros.backend import RclpyBackend, _message_class
from perception_nodes.ros.env import import_rclpy
from perception_nodes.ros.qos import profile

#: how often cores get ``tick`` (synchroniser time-outs, diagnostics)
TICK_PERIOD_S = 0.05

#: parameters of the ROS adapter, not of the core
ADAPTER_KEYS = ("autostart", "qos", "enabled")

#: parameters rclpy itself declares (and those the ROS tooling may pass) that the schema need not know
_ROS_OWN = ("use_sim_time", "start_type_description_service")

import_rclpy()
from rclpy.lifecycle import Node as _LifecycleNode  # noqa: E402
from rclpy.lifecycle import State, TransitionCallbackReturn  # noqa: E402


def _descriptor(spec: ParamSpec) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.parameter import Parameter

    d = ParameterDescriptor(name=spec.name, type=Parameter.Type[spec.type.upper()].value,
                            description=spec.description, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if spec.type == "integer":
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    notes = []
    if spec.choices:
        notes.append("one of: " + ", ".join(spec.choices))
    if spec.read_only:
        notes.append("read-only: needs a restart (or lifecycle cleanup + configure)")
    d.additional_constraints = "; ".join(notes)
    return d


class _FinalizedMachine:
    """Stands in for the lifecycle state machine of a node that left the graph (ManagedCoreNode.leave_graph):
    finalized, no transition possible (rclpy's lifecycle code raises a Python error instead of touching freed
    memory)."""

    initialized = False
    current_state = (4, "finalized")  # lifecycle_msgs/State PRIMARY_STATE_FINALIZED
    available_states: list = []
    available_transitions: list = []
    transition_graph: list = []

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError("the node was destroyed: no lifecycle transition is possible")

    trigger_transition_by_id = trigger_transition_by_label = get_transition_by_label = _refuse

    def destroy_when_not_in_use(self) -> None:
        pass


class ManagedCoreNode(_LifecycleNode):
    """One lifecycle node driving one core (see module doc)."""

    def __init__(self, name: str, core_cls: type[NodeCore] | None = None, *, context: Any = None,
                 parameter_overrides: list[Any] | None = None, **node_kwargs: Any) -> None:
        super().__init__(name, context=context, parameter_overrides=parameter_overrides or [],
                         automatically_declare_parameters_from_overrides=False,
                         allow_undeclared_parameters=False, **node_kwargs)
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

        self.core_cls = core_cls or NODE_TYPES[name]
        self.core: NodeCore | None = None
        self.lock = threading.RLock()  # the core is single-threaded: callbacks, reconfigure, transitions
        self.group = MutuallyExclusiveCallbackGroup()
        self.in_process_inputs: set[str] = set()  # topics handed over in process instead of DDS
        self.in_process_consumers: dict[str, list[ManagedCoreNode]] = {}
        self.dds_skipped: Counter[str] = Counter()  # publishes not serialized: nobody was listening
        self.dds_published: Counter[str] = Counter()
        self.callback_errors: Counter[str] = Counter()
        self.inactive_drops: Counter[str] = Counter()  # in-process messages that came while not active
        self._pubs: dict[str, Any] = {}
        self._pub_kind: dict[str, str] = {}
        self._subs: list[Any] = []
        self._timer = None
        #: why the last ``configure`` failed (None after a success)
        self.configure_error: Exception | None = None
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # --- parameters ---------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        from rclpy.parameter import Parameter

        self.specs = node_schema(self.get_name())
        overrides = self._parameter_overrides  # what --params-file / -p / parameter_overrides gave
        unknown = sorted(n for n in overrides if n not in self.specs and n not in _ROS_OWN
                         and not n.startswith("qos_overrides."))
        if unknown:
            raise ConfigError(f"{self.get_name()}: unknown parameter(s) {', '.join(unknown)} "
                              "(see perception.params.yaml)")
        for name, spec in self.specs.items():
            if name in overrides:  # `1` where a double is meant: widen, as rcl's YAML typing is strict
                try:
                    value = spec.check(overrides[name].value)
                except ValueError as exc:
                    raise ConfigError(f"{self.get_name()}: {exc}, got {overrides[name].value!r}") from None
                overrides[name] = Parameter(name, Parameter.Type[spec.type.upper()], value)
            self.declare_parameter(name, spec.default, _descriptor(spec))

    def params_tree(self) -> dict[str, Any]:
        """The core's parameters (nested, as the params file) from the declared ROS parameters."""
        flat = {n: self.get_parameter(n).value for n in self.specs}
        return {k: v for k, v in unflatten(flat).items() if k not in ADAPTER_KEYS}

    def _on_set_parameters(self, params: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        changes = {p.name: p.value for p in params if p.name in self.specs}
        if not changes:
            return SetParametersResult(successful=True)
        with self.lock:
            if self.core is None:  # unconfigured: rclpy checked type and range; configure builds from them
                return SetParametersResult(successful=True)
            try:
                self.core.reconfigure(changes)
            except (ValueError, TypeError) as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        self.get_logger().info("reconfigured: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    def leave_graph(self) -> None:
        """Destroy the node so that it leaves the ROS graph while this process runs on (LiveGraph._leave_out).

        rclpy 9's lifecycle ``destroy_node`` leaves the C state machine alive, and the machine holds the five
        lifecycle services, ``~/transition_event`` and a share of the node handle: the node stays in the graph
        (``ros2 node list``, services listed and never answered) until the Python object is collected, which
        ``gc.freeze`` (latency/gc_pause.py) can put off for good. This destroys the machine too, and swaps in
        :class:`_FinalizedMachine` (a destroyed machine crashes the process when used): a late message or
        ``is_active()`` sees a finalized node. Left to upstream: ``~/get_type_description`` can outlive a node
        that shares its context with others (rclpy 9.1; ros2/rclpy#1710's follow-up).

        Not used on the way out of a process (plain ``destroy_node`` there, as rclpy does it): once the last
        node of a context is gone, rmw_fastrtps deletes the DDS participant, and with Fast DDS 3.2.3 that can
        deadlock -- a busy wait in ``DomainParticipant::set_listener`` while a discovery callback waits on the
        participant's lock -- when another process removes its endpoints at the same moment (seen here: a
        bringup executable that never exited on SIGTERM)."""
        with self.lock:  # a message in flight in this node finishes first (the core is single-threaded)
            self.destroy_node()
            machine = self._state_machine
            if not isinstance(machine, _FinalizedMachine):
                self._state_machine = _FinalizedMachine()
                machine.destroy_when_not_in_use()
            self.core = None

    # --- lifecycle ----------------------------------------------------------------------------
    def autostart(self) -> bool:
        """configure + activate when the ``autostart`` parameter says so; True when active."""
        from lifecycle_msgs.msg import State as StateMsg

        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart false: waiting for lifecycle transitions")
            return False
        if "enabled" in self.specs and not self.get_parameter("enabled").value:  # e.g. bev_fusion: off by default
            self.get_logger().info("enabled false in the params file: not started; waiting for lifecycle transitions")
            return False
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        self.trigger_activate()
        return self._state_machine.current_state[0] == StateMsg.PRIMARY_STATE_ACTIVE

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            try:
                clock = self.get_clock()
                core = self.core_cls(self.get_name(), self.params_tree(), backend=RclpyBackend(),
                                     clock=lambda: clock.now().nanoseconds, log=_LoggerAdapter(self.get_logger()))
                core.warmup()
                qos = self._output_qos(core)
                for port in core.outputs():
                    self._publisher(port.topic, port.msgtype, qos.get(port.topic, port.qos))
            except Exception as exc:  # a bad calibration file, model or parameter: stay unconfigured
                self.get_logger().error(f"configure failed: {exc}")
                self.configure_error = exc
                self._destroy_publishers()
                return TransitionCallbackReturn.FAILURE
            self.configure_error = None
            self.core = core
            self._pub_kind.update(qos)
        # the model and its warm-up are on the heap now: keep them out of later full collections (a node that
        # configures after start-up -- autostart false, enabled false, a re-configure -- would miss the freeze
        # at process start; latency/gc_pause.py)
        from perception_nodes.latency.gc_pause import freeze_startup_objects

        freeze_startup_objects()
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        from rclpy.clock import Clock, ClockType

        with self.lock:
            for port in self.core.inputs():
                if port.topic in self.in_process_inputs:
                    continue
                try:
                    cls = _message_class(port.msgtype)
                except (ImportError, AttributeError, ValueError):
                    self.get_logger().warning(f"message type {port.msgtype} is not installed: not subscribing to "
                                              f"{port.topic}")
                    continue
                self._subs.append(self.create_subscription(cls, port.topic, self._callback(port.topic),
                                                           profile(port.qos), callback_group=self.group))
            # ticks run on the steady clock: under use_sim_time a ROS-clock timer stops whenever /clock
            # does, and health must keep flowing exactly then
            self._timer = self.create_timer(TICK_PERIOD_S, self._on_tick, callback_group=self.group,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self._destroy_publishers()
            self.core = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            self._stop_inputs()
            self._destroy_publishers()
            self.core = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        return self.on_shutdown(state)

    def is_active(self) -> bool:
        from lifecycle_msgs.msg import State as StateMsg

        return self._state_machine.current_state[0] == StateMsg.PRIMARY_STATE_ACTIVE

    def _stop_inputs(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs.clear()
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    # --- messages -----------------------------------------------------------------------------
    def _output_qos(self, core: NodeCore) -> dict[str, str]:
        """Topic -> QoS kind from the ``qos.<output>`` parameters (``<output>_topic`` names the topic)."""
        out = {}
        for name in self.specs:
            if name.startswith("qos."):
                key = name[4:]
                topic = self.get_parameter(f"{key}_topic").value if f"{key}_topic" in self.specs else ""
                kind = self.get_parameter(name).value
                profile(kind)  # unknown kinds fail configure with the reason
                if topic:
                    out[topic] = kind
        return out

    def _publisher(self, topic: str, msgtype: str, kind: str) -> Any:
        pub = self._pubs.get(topic)
        if pub is None:
            pub = self._pubs[topic] = self.create_publisher(_message_class(msgtype), topic, profile(kind))
            self._pub_kind[topic] = kind
        return pub

    def _destroy_publishers(self) -> None:
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs.clear()
        self._pub_kind.clear()

    def _callback(self, topic: str):
        def cb(msg: Any) -> None:
            self.deliver(topic, msg)

        return cb

    def deliver(self, topic: str, msg: Any) -> None:
        """One message in (from DDS or from a node of this process); what the core emits goes out."""
        with self.lock:
            if self.core is None or not self.is_active():
                self.inactive_drops[topic] += 1  # (over DDS an inactive node is simply not subscribed)
                if self.inactive_drops[topic] == 1:
                    self.get_logger().warning(f"{topic}: message from this process while not active: dropped "
                                              "(counted in inactive_drops)")
                return
            try:
                emits = self.core.handle(topic, msg)
            except Exception as exc:  # last line of defence: the core should have caught it
                emits = self._callback_error(topic, exc)
            self._publish(emits)

    def _on_tick(self) -> None:
        with self.lock:
            if self.core is None:
                return
            try:
                emits = self.core.tick()
            except Exception as exc:
                emits = self._callback_error("tick", exc)
            self._publish(emits)

    def _callback_error(self, where: str, exc: Exception) -> list:
        kind = f"{where}: {type(exc).__name__}"
        self.callback_errors[kind] += 1
        if self.callback_errors[kind] == 1:
            self.get_logger().error(f"{kind}: {exc} (message dropped, counted; the node goes on)")
        if where != "tick":
            self.core.mark_dropped(where, "error")  # the message is lost: it must show in the input counts
        self.core.warnings["exception"] = f"{kind}: {exc}"
        return []

    def _publish(self, emits) -> None:
        for e in emits:
            for consumer in self.in_process_consumers.get(e.topic, ()):
                consumer.deliver(e.topic, e.msg)
            kind = self._pub_kind.get(e.topic, "reliable")
            pub = self._publisher(e.topic, e.msgtype, kind)
            if kind != "latched" and pub.get_subscription_count() == 0:
                self.dds_skipped[e.topic] += 1  # nobody outside listens: no serialization at all
                continue
            pub.publish(e.msg)
            self.dds_published[e.topic] += 1


class _LoggerAdapter:
    """``logging``-style calls onto an rclpy logger."""

    def __init__(self, rcl_logger: Any) -> None:
        self._l = rcl_logger

    def warning(self, fmt: str, *args: Any) -> None:
        self._l.warning(fmt % args if args else fmt)

    def info(self, fmt: str, *args: Any) -> None:
        self._l.info(fmt % args if args else fmt)

    def error(self, fmt: str, *args: Any) -> None:
        self._l.error(fmt % args if args else fmt)


def tree_overrides(params: dict[str, Any]) -> list[Any]:
    """rclpy ``parameter_overrides`` from a params tree (``load_params(...)[node]``)."""
    from rclpy.parameter import Parameter

    return [Parameter(name, value=value) for name, value in flatten(params).items()]


def make_executor(n_nodes: int, context: Any = None) -> Any:
    """A multi-threaded executor: one thread per node's callback group, plus room for /clock and services."""
    from rclpy.executors import MultiThreadedExecutor

    return MultiThreadedExecutor(num_threads=n_nodes + 2, context=context)


def main_single(node_name: str, args: list[str] | None = None) -> None:
    """Entry point of one node as its own process (the bringup package's executables)."""
    import sys

    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.executors import ExternalShutdownException

    from perception_nodes.ros.shm_cleanup import report_zombie_cleanup

    rclpy = import_rclpy()
    report_zombie_cleanup()  # what earlier runs left in /dev/shm (ros/shm_cleanup.py)
    rclpy.init(args=args)
    try:
        try:
            node = ManagedCoreNode(node_name)
        except (ConfigError, InvalidParameterTypeException, InvalidParameterValueException) as exc:
            print(f"{node_name}: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        node.autostart()  # a successful configure freezes the start-up heap (on_configure, latency/gc_pause.py)
        executor = make_executor(1)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:
            if rclpy.ok():  # a worker raced the shutdown (SIGTERM from a launcher): nothing to report
                raise
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
