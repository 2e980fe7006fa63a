{{/*
Names, labels and the pieces every portwatch pod shares: image, settings ConfigMap, writable
scratch volumes (the root filesystem is read-only), pod security context.
*/}}

{{- define "portwatch.name" -}}
{{- $name := regexReplaceAll "[-_.]+$" (default .Chart.Name .Values.nameOverride | trunc 63) "" }}
{{- /* a label value on every object (nameOverride rendered "port watch", which the API
server refuses: a review) */ -}}
{{- if not (regexMatch "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$" $name) }}
{{- fail (printf "nameOverride %q: a label value (letters, digits, '-', '_' and '.', a letter or digit at each end)" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Release-scoped base name; component names add a suffix, so keep room for it (63 - 9). */}}
{{- define "portwatch.fullname" -}}
{{- $full := include "portwatch.fullnameText" . }}
{{- /* every object's name starts with it, the Service's too: a DNS-1035 label (a release
named "pw.prod" or "1pw" rendered, and the API server refused its Service) */ -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $full) }}
{{- fail (printf "the name %q (the release's, or fullnameOverride) must start with a letter and hold only lower-case letters, digits and '-': Kubernetes refuses it as a Service name" $full) }}
{{- end }}
{{- $full }}
{{- end }}

{{- /* cut to 54 and every trailing '-' dropped (one only, and "a...a--x" cut to "a...a-"
was refused as the user's name: a review) */ -}}
{{- define "portwatch.fullnameText" -}}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $full = .Release.Name }}
{{- else }}
{{- $full = printf "%s-%s" .Release.Name $name }}
{{- end }}
{{- end }}
{{- regexReplaceAll "-+$" ($full | trunc 54) "" }}
{{- end }}

{{- define "portwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portwatch.labels" -}}
helm.sh/chart: {{ include "portwatch.chart" . }}
{{ include "portwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portwatch
{{- end }}

{{/* Labels of one component: pass (dict "root" $ "component" "discover"). */}}
{{- define "portwatch.componentLabels" -}}
{{ include "portwatch.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portwatch.componentSelectorLabels" -}}
{{ include "portwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portwatch.configMapName" -}}
{{- printf "%s-settings" (include "portwatch.fullname" .) }}
{{- end }}

{{- define "portwatch.secretName" -}}
{{- if .Values.clickhouse.existingSecret }}
{{- .Values.clickhouse.existingSecret }}
{{- else }}
{{- printf "%s-clickhouse" (include "portwatch.fullname" .) }}
{{- end }}
{{- end }}

{{- define "portwatch.inventoryConfigMapName" -}}
{{- if .Values.produce.existingInventoryConfigMap }}
{{- .Values.produce.existingInventoryConfigMap }}
{{- else }}
{{- printf "%s-inventory" (include "portwatch.fullname" .) }}
{{- end }}
{{- end }}

{{/* File name of the inventory inside its mount: its suffix picks the parser (YAML or CSV). */}}
{{- define "portwatch.inventoryKey" -}}
{{- if .Values.produce.existingInventoryConfigMap }}
{{- .Values.produce.existingInventoryKey }}
{{- else }}
{{- "inventory.yaml" }}
{{- end }}
{{- end }}

{{/* "true" when the producer has something to scan, "" otherwise. */}}
{{- define "portwatch.hasTargets" -}}
{{- if or .Values.produce.targets .Values.produce.inventory .Values.produce.existingInventoryConfigMap }}true{{- end }}
{{- end }}

{{- define "portwatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* clickhouse://user@host:port/database; the password comes from the Secret, never the URL. */}}
{{- define "portwatch.storeUrl" -}}
{{- $ch := .Values.clickhouse }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]{0,63}$" (toString $ch.database)) }}
{{- fail (printf "clickhouse.database %q: letters, digits and '_' (at most 64, not starting with a digit)" (toString $ch.database)) }}
{{- end }}
{{- /* an IPv6 address in brackets (its colons would read as the port's); HTTPS with secure */ -}}
{{- $host := ternary (printf "[%s]" $ch.host) $ch.host (and (contains ":" $ch.host) (not (hasPrefix "[" $ch.host))) }}
{{- if not (has (toString $ch.secure) (list "true" "false" "<nil>")) }}
{{- fail (printf "clickhouse.secure %q: true or false" (toString $ch.secure)) }}
{{- end }}
{{- printf "%s://%s@%s:%v/%s" (ternary "clickhouses" "clickhouse" (eq (toString $ch.secure) "true")) $ch.user $host $ch.port $ch.database }}
{{- end }}

{{/*
Settings ConfigMap data as a dict, validated: keys must be PORTWATCH_* names; the addresses,
the scope fence and the discovery engine and rate come from their own values (the engine is
tied to discover.netRaw); a password here would leak into a ConfigMap.
*/}}
{{- define "portwatch.settingsData" -}}
{{- $data := dict "PORTWATCH_KAFKA" (required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers) "PORTWATCH_STORE" (include "portwatch.storeUrl" .) }}
{{- if .Values.scopeAllow }}
{{- $_ := set $data "PORTWATCH_SCOPE_ALLOW" .Values.scopeAllow }}
{{- end }}
{{- $known := include "portwatch.knownSettings" . | splitList " " }}
{{- range $key, $value := .Values.settings }}
{{- if not (regexMatch "^PORTWATCH_[A-Z0-9_]+$" $key) }}
{{- fail (printf "settings.%s: keys are PORTWATCH_* environment variables (see `portwatch settings`)" $key) }}
{{- end }}
{{- $owned := dict "PORTWATCH_KAFKA" "kafka.bootstrapServers" "PORTWATCH_STORE" "clickhouse.*" "PORTWATCH_SCOPE_ALLOW" "scopeAllow" "PORTWATCH_ENGINE" "discover.engine" "PORTWATCH_RATE" "discover.rate" "PORTWATCH_ALERTS" "alerts.*" }}
{{- if hasKey $owned $key }}
{{- fail (printf "settings.%s: the chart sets it from %s" $key (get $owned $key)) }}
{{- end }}
{{- if regexMatch "PASSWORD|SECRET|TOKEN" $key }}
{{- fail (printf "settings.%s: secrets do not go in the ConfigMap; use clickhouse.existingSecret" $key) }}
{{- end }}
{{- if not (has $key $known) }}
{{- fail (printf "settings.%s: not a portwatch setting (see `portwatch settings`): a misspelt key would be ignored" $key) }}
{{- end }}
{{- $_ := set $data $key (toString $value) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
The PORTWATCH_* variables portwatch reads (`portwatch settings`, and the web's two): what
settings: may hold. tests/integration/test_helm_chart.py checks it against the code.
*/}}
{{- define "portwatch.knownSettings" -}}
PORTWATCH_ALERTS PORTWATCH_BANNER_WAIT PORTWATCH_BATCH_SECONDS PORTWATCH_BATCH_SIZE PORTWATCH_BROKER_WAIT PORTWATCH_CHANGE_SETTLE PORTWATCH_COMMIT_INTERVAL PORTWATCH_CONCURRENCY PORTWATCH_ENGINE PORTWATCH_IDENTIFY_BUDGET PORTWATCH_IDENTIFY_CONCURRENCY PORTWATCH_KAFKA PORTWATCH_MASSCAN_ADAPTER PORTWATCH_MASSCAN_ADAPTER_IP PORTWATCH_MASSCAN_BINARY PORTWATCH_MASSCAN_PASSES PORTWATCH_MASSCAN_ROUTER_MAC PORTWATCH_MAX_POLL_INTERVAL PORTWATCH_NMAP_DATA PORTWATCH_NMAP_PROBES PORTWATCH_PER_HOST_CONNECTIONS PORTWATCH_PORTS PORTWATCH_PREVALENCE_PRIOR PORTWATCH_RATE PORTWATCH_RETRIES PORTWATCH_SCOPE_ALLOW PORTWATCH_SESSION_TIMEOUT PORTWATCH_SHARD_ATTEMPTS PORTWATCH_SHARD_HOSTS PORTWATCH_SHARD_PORTS PORTWATCH_SINK_BUFFER PORTWATCH_SNMP_PUBLIC_COMMUNITY PORTWATCH_STORE PORTWATCH_TARPIT_THRESHOLD PORTWATCH_TIMEOUT PORTWATCH_TLS PORTWATCH_TLS_BUDGET PORTWATCH_TLS_TIMEOUT PORTWATCH_TLS_TRUST_STORE PORTWATCH_TOPIC_PREFIX PORTWATCH_TOPIC_REPLICATION PORTWATCH_UDP PORTWATCH_UDP_CONCURRENCY PORTWATCH_UDP_DEADLINE PORTWATCH_UDP_RATE PORTWATCH_UDP_RETRIES PORTWATCH_UDP_TIMEOUT PORTWATCH_WEB_COOKIE_SECURE PORTWATCH_WEB_TRUSTED_PROXIES
{{- end }}

{{/*
Pod annotations: a change of what a process reads once at its start rolls the pods: the
settings (env) every pod; and ("config": a list of "alerts", "token", "password") what
that component reads of the alert rules and their secrets, the web token and the
ClickHouse password given in values (a `helm upgrade` changing only those left every pod
on the old ones: a review). Secrets named by existingSecret are the operator's to roll.
*/}}
{{- define "portwatch.podAnnotations" -}}
checksum/settings: {{ include "portwatch.settingsData" .root | sha256sum }}
{{- with .config }}
checksum/config: {{ include "portwatch.configDigest" (dict "root" $.root "parts" .) | sha256sum }}
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
What checksum/config digests: the alert rules as given (no secret in them), and the
secrets a component reads, stretched first by scrypt (sprig's derivePassword: ~0.2 s of
CPU, once per component and render, only when a secret is given), since anyone who may
list pods reads the annotation: a plain SHA-256 of a password let them test guesses at it
offline at once (a review).
*/}}
{{- define "portwatch.configDigest" -}}
{{- $v := .root.Values }}
{{- $secrets := list }}
{{- if has "alerts" .parts }}
{{- (omit $v.alerts "secretEnv") | toJson }}
{{- range $key := keys (default dict $v.alerts.secretEnv) | sortAlpha }}
{{- $key }}
{{- $secrets = append $secrets (get $v.alerts.secretEnv $key | toString) }}
{{- end }}
{{- end }}
{{- if has "token" .parts }}{{ $secrets = append $secrets (toString $v.web.token) }}{{ end }}
{{- if has "password" .parts }}{{ $secrets = append $secrets (toString $v.clickhouse.password) }}{{ end }}
{{- $joined := join "\u0000" $secrets }}
{{- if $joined | replace "\u0000" "" }}
{{- derivePassword 1 "maximum" $joined "portwatch" "pod-annotation" }}
{{- end }}
{{- end }}

{{/*
Container security context. Pass (dict "netRaw" bool). Everything is dropped; with netRaw the
container keeps NET_RAW (below).
*/}}
{{- /*
With netRaw (discovery with masscan): uid 0 holding exactly NET_RAW, no privilege
escalation. The worker itself must hold the capability: the engine chooser takes masscan
only when the process can open the raw answer tap (probers/discovery/engines.py), so a
capability-less worker with a capable masscan binary always fell back to connect() (a
review). Root here is no more than NET_RAW: every other capability is dropped, the root
filesystem is read-only and no_new_privs is on.
*/ -}}
{{- define "portwatch.containerSecurityContext" -}}
{{- if .netRaw }}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
{{- else }}
runAsNonRoot: true
{{- end }}
readOnlyRootFilesystem: true
privileged: false
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
  {{- if .netRaw }}
  add: ["NET_RAW"]
  {{- end }}
{{- end }}

{{/* Environment shared by every container: the settings ConfigMap and a writable HOME. */}}
{{- define "portwatch.envFrom" -}}
- configMapRef:
    name: {{ include "portwatch.configMapName" . }}
{{- end }}

{{- define "portwatch.baseEnv" -}}
- name: HOME
  value: /var/lib/portwatch
- name: TMPDIR
  value: /tmp
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* Writable scratch: the working directory (Faust data, masscan's paused.conf) and /tmp;
then .Values.extraVolumes / extraVolumeMounts, in every pod (a CA bundle for
PORTWATCH_TLS_TRUST_STORE, nmap's data for PORTWATCH_NMAP_DATA: every command checks the
settings' files, so every pod mounts them). */}}
{{- define "portwatch.scratchVolumeMounts" -}}
- name: work
  mountPath: /var/lib/portwatch
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "portwatch.scratchVolumes" -}}
- name: work
  emptyDir: {}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod spec fields every component shares. */}}
{{- define "portwatch.podCommon" -}}
serviceAccountName: {{ include "portwatch.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Alerting (templates/alerts.yaml): what the process container gets when alerts.enabled. */}}
{{- define "portwatch.alertsSecretName" -}}
{{- default (printf "%s-alerts" (include "portwatch.fullname" .)) .Values.alerts.existingSecret -}}
{{- end }}

{{- define "portwatch.alertsEnvFrom" -}}
{{- if and .Values.alerts.enabled (or .Values.alerts.secretEnv .Values.alerts.existingSecret) }}
- secretRef:
    name: {{ include "portwatch.alertsSecretName" . }}
{{- end }}
{{- end }}

{{- define "portwatch.alertsEnv" -}}
{{- if .Values.alerts.enabled }}
- name: PORTWATCH_ALERTS
  value: /etc/portwatch/alerts/alerts.yaml
{{- end }}
{{- end }}

{{- define "portwatch.alertsVolumeMounts" -}}
{{- if .Values.alerts.enabled }}
- name: alerts
  mountPath: /etc/portwatch/alerts
  readOnly: true
{{- end }}
{{- end }}

{{- define "portwatch.alertsVolumes" -}}
{{- if .Values.alerts.enabled }}
- name: alerts
  configMap:
    name: {{ include "portwatch.fullname" . }}-alerts
{{- end }}
{{- end }}

{{- define "portwatch.webSecretName" -}}
{{- if .Values.web.existingSecret }}
{{- .Values.web.existingSecret }}
{{- else }}
{{- printf "%s-web" (include "portwatch.fullname" .) }}
{{- end }}
{{- end }}

{{/* Host names `serve` answers to: the Ingress host, then web.allowedHosts. */}}
{{- define "portwatch.webAllowedHosts" -}}
{{- $hosts := list }}
{{- if and .Values.web.ingress.enabled .Values.web.ingress.host }}
{{- $hosts = append $hosts .Values.web.ingress.host }}
{{- end }}
{{- range .Values.web.allowedHosts }}
{{- $hosts = append $hosts . }}
{{- end }}
{{- toJson ($hosts | uniq) }}
{{- end }}

{{/* Base URL of the web reports, for the dashboards' links. */}}
{{- define "portwatch.webUrl" -}}
{{- $g := .Values.grafana.dashboards }}
{{- if $g.webUrl }}
{{- $g.webUrl | trimSuffix "/" }}
{{- else if and .Values.web.enabled .Values.web.ingress.enabled .Values.web.ingress.host }}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.web.ingress.tlsSecretName))) .Values.web.ingress.host }}
{{- end }}
{{- end }}
