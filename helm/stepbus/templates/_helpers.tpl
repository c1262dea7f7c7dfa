{{/*
What the code fixes about each service: its module, env prefix, port, the consumer groups it
joins (`<topic prefix><group_id><suffix>`, group_id from STEPBUS_<SERVICE>_GROUP_ID or the
default here) with their input topics, and which dependencies it reaches.
The chart tests check this table against the settings classes and the services' wiring.
*/}}
{{- define "stepbus.catalog" -}}
gateway:
  module: stepbus_gateway
  prefix: STEPBUS_GATEWAY_
  port: 8080
  portName: http
  groups: []
  uses: [kafka, redis, collector, dns]
planner:
  module: stepbus_planner
  prefix: STEPBUS_PLANNER_
  port: 9101
  portName: metrics
  group: stepbus-planner
  groups:
    - {suffix: "", topics: [tasks, planner.history]}
  uses: [kafka, redis, collector, dns, llm]
tool-executor:
  module: stepbus_tool_executor
  prefix: STEPBUS_TOOL_EXECUTOR_
  port: 9102
  portName: metrics
  group: stepbus-tool-executor
  groups:
    - {suffix: "", topics: [tool.calls]}
  uses: [kafka, collector, dns]
memory:
  module: stepbus_memory
  prefix: STEPBUS_MEMORY_
  port: 9103
  portName: metrics
  group: stepbus-memory
  groups:
    - {suffix: "", topics: [memory.requests]}
    - {suffix: -store, topics: [results, tasks]}
  uses: [kafka, redis, qdrant, collector, dns]
critic:
  module: stepbus_critic
  prefix: STEPBUS_CRITIC_
  port: 9104
  portName: metrics
  group: stepbus-critic
  groups:
    - {suffix: "", topics: [critic.requests]}
  uses: [kafka, collector, dns, llm]
{{- end }}

{{- define "stepbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stepbus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stepbus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "stepbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stepbus
{{- end }}

{{/* Selector labels of one service: (dict "root" $ "service" $name) */}}
{{- define "stepbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepbus.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end }}

{{- define "stepbus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stepbus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of one service: (dict "root" $ "service" $name) */}}
{{- define "stepbus.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .service (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* A service's values over the defaults: (dict "root" $ "service" $name) -> YAML */}}
{{- define "stepbus.serviceValues" -}}
{{- $svc := get .root.Values.services .service | default dict }}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $svc)) }}
{{- end }}

{{/* Partitions of every catalog topic (suffix -> count), the values' overrides applied. */}}
{{- define "stepbus.partitions" -}}
{{- $catalog := .Files.Get "files/topics.json" | fromJson }}
{{- $out := dict }}
{{- range $suffix, $spec := $catalog }}
{{- $_ := set $out $suffix (int (get $.Values.topics.partitions $suffix | default $spec.partitions)) }}
{{- if lt (int (get $out $suffix)) (int $spec.partitions) }}
{{- fail (printf "topics.partitions.%s: fewer than the catalog's %d" $suffix (int $spec.partitions)) }}
{{- end }}
{{- end }}
{{- /* Partition p of each is owned by one replica (stepbus_runtime.create_topics.CO_PARTITIONED). */}}
{{- range $group := list (list "tasks" "planner.history" "planner.snapshots") (list "tool.calls" "tool.ledger") }}
{{- $first := get $out (first $group) }}
{{- range $group }}
{{- if ne (get $out .) $first }}
{{- fail (printf "topics.partitions: %s must have equal partitions" (join ", " $group)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* A setting value as the environment carries it (whole numbers without an exponent). */}}
{{- define "stepbus.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* Pod and container security contexts shared by every pod of the chart. */}}
{{- define "stepbus.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "stepbus.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Kafka address and security, shared by the services and the topic Job. */}}
{{- define "stepbus.kafkaEnv" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: STEPBUS_TOPIC_PREFIX
  value: {{ .Values.topics.prefix | quote }}
- name: STEPBUS_TOPIC_REPLICATION_FACTOR
  value: {{ .Values.topics.replicationFactor | quote }}
{{- $k := .Values.kafka }}
{{- if or $k.tls.enabled $k.sasl.enabled }}
- name: STEPBUS_KAFKA_SECURITY_PROTOCOL
  value: {{ ternary (ternary "SASL_SSL" "SASL_PLAINTEXT" $k.tls.enabled) "SSL" $k.sasl.enabled | quote }}
{{- end }}
{{- if $k.tls.enabled }}
- name: STEPBUS_KAFKA_SSL_CAFILE
  value: /etc/stepbus/kafka-tls/{{ $k.tls.caKey }}
{{- if $k.tls.certKey }}
- name: STEPBUS_KAFKA_SSL_CERTFILE
  value: /etc/stepbus/kafka-tls/{{ $k.tls.certKey }}
{{- end }}
{{- if $k.tls.keyKey }}
- name: STEPBUS_KAFKA_SSL_KEYFILE
  value: /etc/stepbus/kafka-tls/{{ $k.tls.keyKey }}
{{- end }}
{{- end }}
{{- if $k.sasl.enabled }}
- name: STEPBUS_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: STEPBUS_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ required "kafka.sasl.existingSecret is required with SASL" $k.sasl.existingSecret }}, key: {{ $k.sasl.usernameKey }}}
- name: STEPBUS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $k.sasl.existingSecret }}, key: {{ $k.sasl.passwordKey }}}
{{- end }}
{{- end }}

{{- define "stepbus.kafkaVolume" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ required "kafka.tls.existingSecret is required with TLS" .Values.kafka.tls.existingSecret }}
{{- end }}
{{- end }}

{{- define "stepbus.kafkaVolumeMount" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  mountPath: /etc/stepbus/kafka-tls
  readOnly: true
{{- end }}
{{- end }}
