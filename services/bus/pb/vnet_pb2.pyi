from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSPORT_UNSPECIFIED: _ClassVar[Transport]
    TRANSPORT_TCP: _ClassVar[Transport]
    TRANSPORT_UDP: _ClassVar[Transport]
    TRANSPORT_TLS: _ClassVar[Transport]

class AttachmentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTACHMENT_UNSPECIFIED: _ClassVar[AttachmentKind]
    ATTACHMENT_TAP: _ClassVar[AttachmentKind]
    ATTACHMENT_PACKET: _ClassVar[AttachmentKind]
    ATTACHMENT_QEMU_STREAM: _ClassVar[AttachmentKind]
    ATTACHMENT_CONTAINER: _ClassVar[AttachmentKind]

class GuestOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUEST_OP_UNSPECIFIED: _ClassVar[GuestOp]
    GUEST_OP_ATTACH: _ClassVar[GuestOp]
    GUEST_OP_DETACH: _ClassVar[GuestOp]

class MigrationPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_PHASE_UNSPECIFIED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_STARTED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PROGRESS: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_DONE: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_FAILED: _ClassVar[MigrationPhase]
TRANSPORT_UNSPECIFIED: Transport
TRANSPORT_TCP: Transport
TRANSPORT_UDP: Transport
TRANSPORT_TLS: Transport
ATTACHMENT_UNSPECIFIED: AttachmentKind
ATTACHMENT_TAP: AttachmentKind
ATTACHMENT_PACKET: AttachmentKind
ATTACHMENT_QEMU_STREAM: AttachmentKind
ATTACHMENT_CONTAINER: AttachmentKind
GUEST_OP_UNSPECIFIED: GuestOp
GUEST_OP_ATTACH: GuestOp
GUEST_OP_DETACH: GuestOp
MIGRATION_PHASE_UNSPECIFIED: MigrationPhase
MIGRATION_PHASE_STARTED: MigrationPhase
MIGRATION_PHASE_PROGRESS: MigrationPhase
MIGRATION_PHASE_DONE: MigrationPhase
MIGRATION_PHASE_FAILED: MigrationPhase

class Envelope(_message.Message):
    __slots__ = ("schema_version", "source", "instance", "seq", "ts", "heartbeat", "frame_counts", "link_measurements", "forwarder_state", "desired_state", "traffic_matrix", "topology_change", "plan", "migration_status", "migration_request", "probe", "app_report", "guest_command")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LINK_MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    FORWARDER_STATE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_MATRIX_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_STATUS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    APP_REPORT_FIELD_NUMBER: _ClassVar[int]
    GUEST_COMMAND_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    source: str
    instance: int
    seq: int
    ts: float
    heartbeat: Heartbeat
    frame_counts: FrameCounts
    link_measurements: LinkMeasurements
    forwarder_state: ForwarderState
    desired_state: DesiredState
    traffic_matrix: TrafficMatrix
    topology_change: TopologyChange
    plan: Plan
    migration_status: MigrationStatus
    migration_request: MigrationRequest
    probe: Probe
    app_report: AppReport
    guest_command: GuestCommand
    def __init__(self, schema_version: _Optional[int] = ..., source: _Optional[str] = ..., instance: _Optional[int] = ..., seq: _Optional[int] = ..., ts: _Optional[float] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., frame_counts: _Optional[_Union[FrameCounts, _Mapping]] = ..., link_measurements: _Optional[_Union[LinkMeasurements, _Mapping]] = ..., forwarder_state: _Optional[_Union[ForwarderState, _Mapping]] = ..., desired_state: _Optional[_Union[DesiredState, _Mapping]] = ..., traffic_matrix: _Optional[_Union[TrafficMatrix, _Mapping]] = ..., topology_change: _Optional[_Union[TopologyChange, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., migration_status: _Optional[_Union[MigrationStatus, _Mapping]] = ..., migration_request: _Optional[_Union[MigrationRequest, _Mapping]] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ..., app_report: _Optional[_Union[AppReport, _Mapping]] = ..., guest_command: _Optional[_Union[GuestCommand, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("service", "host", "uptime_s", "interval_s", "version", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    service: str
    host: str
    uptime_s: float
    interval_s: float
    version: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, service: _Optional[str] = ..., host: _Optional[str] = ..., uptime_s: _Optional[float] = ..., interval_s: _Optional[float] = ..., version: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    def __init__(self, nonce: _Optional[str] = ...) -> None: ...

class PairCount(_message.Message):
    __slots__ = ("src_mac", "dst_mac", "frames", "bytes", "total_frames", "total_bytes")
    SRC_MAC_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    src_mac: str
    dst_mac: str
    frames: int
    bytes: int
    total_frames: int
    total_bytes: int
    def __init__(self, src_mac: _Optional[str] = ..., dst_mac: _Optional[str] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., total_frames: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PairColumns(_message.Message):
    __slots__ = ("macs", "src", "dst", "frames", "bytes", "total_frames", "total_bytes")
    MACS_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    macs: _containers.RepeatedScalarFieldContainer[str]
    src: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[int]
    frames: _containers.RepeatedScalarFieldContainer[int]
    bytes: _containers.RepeatedScalarFieldContainer[int]
    total_frames: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, macs: _Optional[_Iterable[str]] = ..., src: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[int]] = ..., frames: _Optional[_Iterable[int]] = ..., bytes: _Optional[_Iterable[int]] = ..., total_frames: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[_Iterable[int]] = ...) -> None: ...

class FrameCounts(_message.Message):
    __slots__ = ("host", "interval_index", "interval_s", "pairs", "columns")
    HOST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    host: str
    interval_index: int
    interval_s: float
    pairs: _containers.RepeatedCompositeFieldContainer[PairCount]
    columns: PairColumns
    def __init__(self, host: _Optional[str] = ..., interval_index: _Optional[int] = ..., interval_s: _Optional[float] = ..., pairs: _Optional[_Iterable[_Union[PairCount, _Mapping]]] = ..., columns: _Optional[_Union[PairColumns, _Mapping]] = ...) -> None: ...

class LinkSpec(_message.Message):
    __slots__ = ("id", "peer_host", "peer_address", "transport", "fast_path")
    ID_FIELD_NUMBER: _ClassVar[int]
    PEER_HOST_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    peer_host: str
    peer_address: str
    transport: Transport
    fast_path: bool
    def __init__(self, id: _Optional[str] = ..., peer_host: _Optional[str] = ..., peer_address: _Optional[str] = ..., transport: _Optional[_Union[Transport, str]] = ..., fast_path: _Optional[bool] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("dst_mac", "src_mac", "link_id", "guest_id", "drop")
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    SRC_MAC_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    dst_mac: str
    src_mac: str
    link_id: str
    guest_id: str
    drop: bool
    def __init__(self, dst_mac: _Optional[str] = ..., src_mac: _Optional[str] = ..., link_id: _Optional[str] = ..., guest_id: _Optional[str] = ..., drop: _Optional[bool] = ...) -> None: ...

class Guest(_message.Message):
    __slots__ = ("id", "mac", "ip", "kind", "attachment", "standby")
    ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    id: str
    mac: str
    ip: str
    kind: AttachmentKind
    attachment: str
    standby: bool
    def __init__(self, id: _Optional[str] = ..., mac: _Optional[str] = ..., ip: _Optional[str] = ..., kind: _Optional[_Union[AttachmentKind, str]] = ..., attachment: _Optional[str] = ..., standby: _Optional[bool] = ...) -> None: ...

class LinkStatus(_message.Message):
    __slots__ = ("spec", "up", "up_since", "reconnects")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    UP_SINCE_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    spec: LinkSpec
    up: bool
    up_since: float
    reconnects: int
    def __init__(self, spec: _Optional[_Union[LinkSpec, _Mapping]] = ..., up: _Optional[bool] = ..., up_since: _Optional[float] = ..., reconnects: _Optional[int] = ...) -> None: ...

class ForwarderState(_message.Message):
    __slots__ = ("host", "is_proxy", "generation", "listen_address", "links", "rules", "guests", "waiting", "cpu")
    HOST_FIELD_NUMBER: _ClassVar[int]
    IS_PROXY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    host: str
    is_proxy: bool
    generation: int
    listen_address: str
    links: _containers.RepeatedCompositeFieldContainer[LinkStatus]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    guests: _containers.RepeatedCompositeFieldContainer[Guest]
    waiting: _containers.RepeatedCompositeFieldContainer[Guest]
    cpu: HostCpu
    def __init__(self, host: _Optional[str] = ..., is_proxy: _Optional[bool] = ..., generation: _Optional[int] = ..., listen_address: _Optional[str] = ..., links: _Optional[_Iterable[_Union[LinkStatus, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., guests: _Optional[_Iterable[_Union[Guest, _Mapping]]] = ..., waiting: _Optional[_Iterable[_Union[Guest, _Mapping]]] = ..., cpu: _Optional[_Union[HostCpu, _Mapping]] = ...) -> None: ...

class HostCpu(_message.Message):
    __slots__ = ("quota_cores", "throttled_share")
    QUOTA_CORES_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_SHARE_FIELD_NUMBER: _ClassVar[int]
    quota_cores: float
    throttled_share: float
    def __init__(self, quota_cores: _Optional[float] = ..., throttled_share: _Optional[float] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("host", "generation", "links", "rules")
    HOST_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    host: str
    generation: int
    links: _containers.RepeatedCompositeFieldContainer[LinkSpec]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    def __init__(self, host: _Optional[str] = ..., generation: _Optional[int] = ..., links: _Optional[_Iterable[_Union[LinkSpec, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ...) -> None: ...

class LinkMeasurement(_message.Message):
    __slots__ = ("link_id", "peer_host", "transport", "up", "rtt_ms", "tx_bps", "rx_bps", "tx_frames", "rx_frames", "drops", "loss")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_HOST_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    TX_BPS_FIELD_NUMBER: _ClassVar[int]
    RX_BPS_FIELD_NUMBER: _ClassVar[int]
    TX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    peer_host: str
    transport: Transport
    up: bool
    rtt_ms: float
    tx_bps: float
    rx_bps: float
    tx_frames: int
    rx_frames: int
    drops: int
    loss: float
    def __init__(self, link_id: _Optional[str] = ..., peer_host: _Optional[str] = ..., transport: _Optional[_Union[Transport, str]] = ..., up: _Optional[bool] = ..., rtt_ms: _Optional[float] = ..., tx_bps: _Optional[float] = ..., rx_bps: _Optional[float] = ..., tx_frames: _Optional[int] = ..., rx_frames: _Optional[int] = ..., drops: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class LinkMeasurements(_message.Message):
    __slots__ = ("host", "interval_s", "links")
    HOST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    host: str
    interval_s: float
    links: _containers.RepeatedCompositeFieldContainer[LinkMeasurement]
    def __init__(self, host: _Optional[str] = ..., interval_s: _Optional[float] = ..., links: _Optional[_Iterable[_Union[LinkMeasurement, _Mapping]]] = ...) -> None: ...

class InferenceParams(_message.Message):
    __slots__ = ("update_rate_hz", "smoothing_window_s", "prune_fraction", "detection_threshold", "damping_s")
    UPDATE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DETECTION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DAMPING_S_FIELD_NUMBER: _ClassVar[int]
    update_rate_hz: float
    smoothing_window_s: float
    prune_fraction: float
    detection_threshold: float
    damping_s: float
    def __init__(self, update_rate_hz: _Optional[float] = ..., smoothing_window_s: _Optional[float] = ..., prune_fraction: _Optional[float] = ..., detection_threshold: _Optional[float] = ..., damping_s: _Optional[float] = ...) -> None: ...

class Edge(_message.Message):
    __slots__ = ("src", "dst", "weight", "bytes_per_s")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    weight: float
    bytes_per_s: float
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., weight: _Optional[float] = ..., bytes_per_s: _Optional[float] = ...) -> None: ...

class TrafficMatrix(_message.Message):
    __slots__ = ("nodes", "values", "params")
    NODES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    params: InferenceParams
    def __init__(self, nodes: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., params: _Optional[_Union[InferenceParams, _Mapping]] = ...) -> None: ...

class TopologyChange(_message.Message):
    __slots__ = ("change_id", "nodes", "edges", "params", "shape", "distance")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    change_id: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    params: InferenceParams
    shape: str
    distance: float
    def __init__(self, change_id: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ..., params: _Optional[_Union[InferenceParams, _Mapping]] = ..., shape: _Optional[str] = ..., distance: _Optional[float] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("guest_id", "host")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    host: str
    def __init__(self, guest_id: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("migration_id", "guest_id", "from_host", "to_host", "est_gain", "est_cost_s")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_HOST_FIELD_NUMBER: _ClassVar[int]
    TO_HOST_FIELD_NUMBER: _ClassVar[int]
    EST_GAIN_FIELD_NUMBER: _ClassVar[int]
    EST_COST_S_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    guest_id: str
    from_host: str
    to_host: str
    est_gain: float
    est_cost_s: float
    def __init__(self, migration_id: _Optional[str] = ..., guest_id: _Optional[str] = ..., from_host: _Optional[str] = ..., to_host: _Optional[str] = ..., est_gain: _Optional[float] = ..., est_cost_s: _Optional[float] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("plan_id", "planner", "based_on_change", "placement", "links_add", "links_remove", "desired", "migrations", "explanation")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PLANNER_FIELD_NUMBER: _ClassVar[int]
    BASED_ON_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    LINKS_ADD_FIELD_NUMBER: _ClassVar[int]
    LINKS_REMOVE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    plan_id: int
    planner: str
    based_on_change: int
    placement: _containers.RepeatedCompositeFieldContainer[Placement]
    links_add: _containers.RepeatedCompositeFieldContainer[LinkSpec]
    links_remove: _containers.RepeatedCompositeFieldContainer[LinkSpec]
    desired: _containers.RepeatedCompositeFieldContainer[DesiredState]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    explanation: str
    def __init__(self, plan_id: _Optional[int] = ..., planner: _Optional[str] = ..., based_on_change: _Optional[int] = ..., placement: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., links_add: _Optional[_Iterable[_Union[LinkSpec, _Mapping]]] = ..., links_remove: _Optional[_Iterable[_Union[LinkSpec, _Mapping]]] = ..., desired: _Optional[_Iterable[_Union[DesiredState, _Mapping]]] = ..., migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., explanation: _Optional[str] = ...) -> None: ...

class GuestCommand(_message.Message):
    __slots__ = ("host", "command_id", "op", "guest")
    HOST_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    host: str
    command_id: str
    op: GuestOp
    guest: Guest
    def __init__(self, host: _Optional[str] = ..., command_id: _Optional[str] = ..., op: _Optional[_Union[GuestOp, str]] = ..., guest: _Optional[_Union[Guest, _Mapping]] = ...) -> None: ...

class MigrationRequest(_message.Message):
    __slots__ = ("migration_id", "guest_id", "to_host", "requested_by")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TO_HOST_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    guest_id: str
    to_host: str
    requested_by: str
    def __init__(self, migration_id: _Optional[str] = ..., guest_id: _Optional[str] = ..., to_host: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class MigrationStatus(_message.Message):
    __slots__ = ("migration_id", "guest_id", "from_host", "to_host", "phase", "backend", "progress", "detail", "error", "total_s", "downtime_s", "bytes_moved")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_HOST_FIELD_NUMBER: _ClassVar[int]
    TO_HOST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    guest_id: str
    from_host: str
    to_host: str
    phase: MigrationPhase
    backend: str
    progress: float
    detail: str
    error: str
    total_s: float
    downtime_s: float
    bytes_moved: int
    def __init__(self, migration_id: _Optional[str] = ..., guest_id: _Optional[str] = ..., from_host: _Optional[str] = ..., to_host: _Optional[str] = ..., phase: _Optional[_Union[MigrationPhase, str]] = ..., backend: _Optional[str] = ..., progress: _Optional[float] = ..., detail: _Optional[str] = ..., error: _Optional[str] = ..., total_s: _Optional[float] = ..., downtime_s: _Optional[float] = ..., bytes_moved: _Optional[int] = ...) -> None: ...

class AppReport(_message.Message):
    __slots__ = ("app", "guest", "rank", "iterations", "iterations_per_s", "bytes_sent", "interval_s", "topology", "workers", "bytes_received", "done", "error")
    APP_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    app: str
    guest: str
    rank: int
    iterations: int
    iterations_per_s: float
    bytes_sent: int
    interval_s: float
    topology: str
    workers: int
    bytes_received: int
    done: bool
    error: str
    def __init__(self, app: _Optional[str] = ..., guest: _Optional[str] = ..., rank: _Optional[int] = ..., iterations: _Optional[int] = ..., iterations_per_s: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., interval_s: _Optional[float] = ..., topology: _Optional[str] = ..., workers: _Optional[int] = ..., bytes_received: _Optional[int] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
