{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "phiserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "phiserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "phiserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "phiserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "phiserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "phiserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phiserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "phiserve.labels" -}}
helm.sh/chart: {{ include "phiserve.chart" . }}
{{ include "phiserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: phiserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------ */}}

{{- define "phiserve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion (ternary "gpu" "cpu" .Values.gpu.enabled)) -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when pinned, else repository:tag; the argument is an image dict */}}
{{- define "phiserve.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "phiserve.awsCliImage" -}}
{{- include "phiserve.imageRef" .Values.awsCli.image -}}
{{- end -}}

{{/* Derived settings -------------------------------------------------------------------- */}}

{{/* s3 | pvc | image */}}
{{- define "phiserve.modelSource" -}}
{{- $m := .Values.modelRepository -}}
{{- if $m.source -}}
{{- $m.source -}}
{{- else if $m.s3.bucket -}}
s3
{{- else if $m.pvc.existingClaim -}}
pvc
{{- else -}}
image
{{- end -}}
{{- end -}}

{{- define "phiserve.modelPath" -}}
{{- if eq (include "phiserve.modelSource" .) "image" -}}
{{- .Values.modelRepository.imagePath -}}
{{- else -}}
{{- .Values.modelRepository.mountPath -}}
{{- end -}}
{{- end -}}

{{- define "phiserve.executionProvider" -}}
{{- .Values.server.executionProvider | default (ternary "cuda" "cpu" .Values.gpu.enabled) -}}
{{- end -}}


{{/* A value as a PHISERVE_* variable: a list as JSON, a whole number without an exponent (YAML
     numbers are floats: 16777216 would print as 1.6777216e+07, which an integer setting refuses) */}}
{{- define "phiserve.envValue" -}}
{{- if kindIs "slice" . -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{- define "phiserve.scheme" -}}
{{- ternary "HTTPS" "HTTP" .Values.tls.enabled -}}
{{- end -}}

{{- define "phiserve.terminationGracePeriodSeconds" -}}
{{- $drain := add (int (ceil .Values.server.drain.delaySeconds)) (int (ceil .Values.server.drain.timeoutSeconds)) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $drain 15 -}}
{{- else -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed server.drain.delaySeconds + server.drain.timeoutSeconds (%v): the kubelet would SIGKILL requests the server is still draining" .Values.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the pod (fixed: the image and the contract test rely on them) */}}
{{- define "phiserve.homePath" -}}/var/lib/phiserve/home{{- end -}}
{{- define "phiserve.secretsPath" -}}/etc/phiserve/secrets{{- end -}}
{{- define "phiserve.kekPath" -}}/var/run/phiserve/kek{{- end -}}

{{- define "phiserve.cdsJwksPath" -}}/etc/phiserve/cds-jwks{{- end -}}

{{- define "phiserve.kekFile" -}}
{{- printf "%s/kek.json" (include "phiserve.kekPath" .) -}}
{{- end -}}

{{- define "phiserve.jwksFile" -}}
{{- if .Values.secretsStore.enabled -}}
{{- printf "%s/csi/%s" (include "phiserve.secretsPath" .) .Values.secretsStore.jwksObject -}}
{{- else -}}
{{- printf "%s/jwks/%s" (include "phiserve.secretsPath" .) .Values.auth.jwks.secretKey -}}
{{- end -}}
{{- end -}}

{{/* Where the KEK source file is mounted (a Secret or the CSI volume), before its 0600 copy */}}
{{- define "phiserve.kekSourceFile" -}}
{{- if .Values.secretsStore.enabled -}}
{{- printf "%s/csi/%s" (include "phiserve.secretsPath" .) .Values.secretsStore.kekObject -}}
{{- else -}}
{{- printf "%s/kek/%s" (include "phiserve.secretsPath" .) .Values.keyProvider.local.secretKey -}}
{{- end -}}
{{- end -}}

{{- define "phiserve.usesJwksFile" -}}
{{- if and .Values.auth.enabled (not .Values.auth.jwks.url) -}}true{{- end -}}
{{- end -}}

{{/* CDS clients ------------------------------------------------------------------------ */}}

{{/* ConfigMap key of the inline JWKS of cds.clients[i]; the argument is the index */}}
{{- define "phiserve.cdsJwksKey" -}}
{{- printf "client-%d.json" (int .) -}}
{{- end -}}

{{/* PHISERVE_CDS_CLIENTS: cds.clients in the server's spelling, an inline JWKS as its mounted file */}}
{{- define "phiserve.cdsClients" -}}
{{- $entries := list -}}
{{- range $i, $c := .Values.cds.clients -}}
{{- $entry := dict "iss" $c.iss -}}
{{- if $c.jwks -}}
{{- $_ := set $entry "jwks_file" (printf "%s/%s" (include "phiserve.cdsJwksPath" $) (include "phiserve.cdsJwksKey" $i)) -}}
{{- else -}}
{{- $_ := set $entry "jwks_url" $c.jwksUrl -}}
{{- end -}}
{{- with $c.jku }}{{ $_ := set $entry "jku" . }}{{ end -}}
{{- /* absent: every service, any https FHIR server (the server's default); [] allows none */ -}}
{{- if hasKey $c "services" }}{{ $_ := set $entry "services" $c.services }}{{ end -}}
{{- if hasKey $c "fhirServers" }}{{ $_ := set $entry "fhir_servers" $c.fhirServers }}{{ end -}}
{{- $entries = append $entries $entry -}}
{{- end -}}
{{- toJson $entries -}}
{{- end -}}

{{/* "true" when a CDS client's keys are inline (the cds-jwks ConfigMap is rendered) */}}
{{- define "phiserve.cdsInlineJwks" -}}
{{- range .Values.cds.clients }}{{ if .jwks }}true{{ end }}{{ end -}}
{{- end -}}

{{/* "true" when a CDS client makes the server call out: a JWKS or jku URL, or a FHIR server
     (any https one unless fhirServers is given, empty for none) */}}
{{- define "phiserve.cdsNeedsEgress" -}}
{{- range .Values.cds.clients -}}
{{- if or .jwksUrl .jku .fhirServers (kindIs "invalid" .fhirServers) }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* Hardened container securityContext (restricted Pod Security Standard) */}}
{{- define "phiserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "phiserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks that the schema cannot express (cross-field) */}}
{{- define "phiserve.validate" -}}
{{- $src := include "phiserve.modelSource" . -}}
{{- if and (eq $src "s3") (not .Values.modelRepository.s3.bucket) -}}
{{- fail "modelRepository.source is s3 but modelRepository.s3.bucket is empty" -}}
{{- end -}}
{{- if and (eq $src "pvc") (not .Values.modelRepository.pvc.existingClaim) -}}
{{- fail "modelRepository.source is pvc but modelRepository.pvc.existingClaim is empty" -}}
{{- end -}}
{{- $kp := .Values.keyProvider -}}
{{- if and (eq $kp.type "local") (not .Values.secretsStore.enabled) (not $kp.local.existingSecret) -}}
{{- fail "keyProvider.type local needs keyProvider.local.existingSecret (a Secret holding the KEK file) or secretsStore.enabled" -}}
{{- end -}}
{{- if and (eq $kp.type "aws-kms") (not $kp.awsKms.keyId) -}}
{{- fail "keyProvider.type aws-kms needs keyProvider.awsKms.keyId" -}}
{{- end -}}
{{- if and (eq $kp.type "aws-kms") (not $kp.awsKms.region) -}}
{{- fail "keyProvider.type aws-kms needs keyProvider.awsKms.region" -}}
{{- end -}}
{{- if and (eq $kp.type "vault-transit") (not $kp.vaultTransit.address) -}}
{{- fail "keyProvider.type vault-transit needs keyProvider.vaultTransit.address" -}}
{{- end -}}
{{- if and (eq $kp.type "vault-transit") (not $kp.vaultTransit.tokenSecret.name) -}}
{{- fail "keyProvider.type vault-transit needs keyProvider.vaultTransit.tokenSecret.name (a Secret holding the Vault token)" -}}
{{- end -}}
{{- if and (include "phiserve.usesJwksFile" .) (not .Values.secretsStore.enabled) (not .Values.auth.jwks.existingSecret) -}}
{{- fail "auth needs auth.jwks.url or auth.jwks.existingSecret (a Secret holding the JWKS) or secretsStore.enabled" -}}
{{- end -}}
{{- if and .Values.secretsStore.enabled (not .Values.secretsStore.secretProviderClass) -}}
{{- fail "secretsStore.enabled needs secretsStore.secretProviderClass" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.tls) -}}
{{- fail "ingress.enabled needs ingress.tls: the API carries PHI and is never exposed over plain HTTP" -}}
{{- end -}}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) -}}
{{- fail "otel.enabled needs otel.endpoint" -}}
{{- end -}}
{{- if and .Values.otelCollector.enabled (not .Values.otel.enabled) -}}
{{- fail "otelCollector.enabled needs otel.enabled (otel.endpoint is where the agent exports)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.queueTime.enabled) -}}
{{- fail "autoscaling.enabled needs a metric: targetCPUUtilizationPercentage or queueTime.enabled" -}}
{{- end -}}
{{- if and .Values.audit.s3.bucket (not (or .Values.audit.s3.region .Values.keyProvider.awsKms.region)) -}}
{{- fail "audit.s3.bucket needs audit.s3.region (or keyProvider.awsKms.region)" -}}
{{- end -}}
{{- if and (eq $src "s3") (not (or .Values.modelRepository.s3.region .Values.keyProvider.awsKms.region)) -}}
{{- fail "modelRepository.s3.bucket needs modelRepository.s3.region (or keyProvider.awsKms.region)" -}}
{{- end -}}
{{- if and .Values.cds.clients (not .Values.cds.baseUrl) -}}
{{- fail "cds.clients needs cds.baseUrl: client JWTs name the public URL the EHR calls, which the pod cannot know" -}}
{{- end -}}
{{- $issuers := list -}}
{{- range .Values.cds.clients -}}
{{- if has .iss $issuers -}}
{{- fail (printf "cds.clients: iss %q appears twice" .iss) -}}
{{- end -}}
{{- $issuers = append $issuers .iss -}}
{{- end -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES: pod identity from the downward API (expanded by the kubelet) */}}
{{- define "phiserve.otelResourceAttributes" -}}
{{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.node.name=$(NODE_NAME)" (printf "service.version=%s" .Chart.AppVersion) -}}
{{- range $k, $v := .Values.otel.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}

{{/* checkov renders the chart without a namespace ("default"); the chart always renders into
     the release namespace (helm -n). One annotation line, indented by the caller. */}}
{{- define "phiserve.checkovNamespaceSkip" -}}
checkov.io/skip9: CKV_K8S_21=Rendered into the release namespace (helm -n phiserve); checkov renders the chart without one, so it sees the default namespace.
{{- end -}}

{{/* "true" when every image the server pod runs is pinned by digest */}}
{{- define "phiserve.allDigests" -}}
{{- $aws := or (eq (include "phiserve.modelSource" .) "s3") (and .Values.audit.enabled .Values.audit.s3.bucket) -}}
{{- $collector := or (not .Values.otelCollector.enabled) .Values.otelCollector.image.digest -}}
{{- if and .Values.image.digest (or (not $aws) .Values.awsCli.image.digest) $collector -}}true{{- end -}}
{{- end -}}

{{/* The Collector agent's configuration before otelCollector.config is merged over it: OTLP in
     on localhost only, memory_limiter then batch, out to otel.endpoint with otel.protocol (TLS
     unless the endpoint is http://), health_check for the liveness probe, no self-metrics port. */}}
{{- define "phiserve.otelCollectorConfig" -}}
{{- $exporter := ternary "otlp" "otlphttp" (eq .Values.otel.protocol "grpc") -}}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
      http:
        endpoint: 127.0.0.1:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 20
  batch: {}
exporters:
  {{ $exporter }}:
    endpoint: {{ .Values.otel.endpoint | quote }}
    tls:
      insecure: {{ hasPrefix "http://" .Values.otel.endpoint }}
      {{- with .Values.otelCollector.caSecret.name }}
      ca_file: {{ printf "/etc/otelcol/ca/%s" $.Values.otelCollector.caSecret.key | quote }}
      {{- end }}
extensions:
  health_check:
    endpoint: "${env:POD_IP}:13133"
service:
  extensions: [health_check]
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [{{ $exporter }}]
{{- end -}}
