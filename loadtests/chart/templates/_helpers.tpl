{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "loadtest.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loadtest.fullname" -}}
{{- if contains "loadtest" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-loadtest" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "loadtest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loadtest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loadtest.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "loadtest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: phiserve
{{- end -}}

{{/* The target ---------------------------------------------------------------------------- */}}

{{- define "loadtest.targetNamespace" -}}
{{- default .Release.Namespace .Values.target.namespace -}}
{{- end -}}

{{- define "loadtest.targetService" -}}
{{- if .Values.target.service -}}
{{- .Values.target.service -}}
{{- else if contains "phiserve" .Values.target.release -}}
{{- .Values.target.release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-phiserve" .Values.target.release | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loadtest.targetUrl" -}}
{{- if .Values.target.url -}}
{{- .Values.target.url | trimSuffix "/" -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%v" .Values.target.scheme (include "loadtest.targetService" .) (include "loadtest.targetNamespace" .) .Values.target.port -}}
{{- end -}}
{{- end -}}

{{/* Timing -------------------------------------------------------------------------------- */}}

{{- define "loadtest.runSeconds" -}}
{{- if eq .Values.load.shape "ramp" -}}
{{- mul .Values.load.ramp.steps .Values.load.ramp.stepSeconds -}}
{{- else -}}
{{- .Values.load.durationSeconds -}}
{{- end -}}
{{- end -}}

{{- define "loadtest.deadline" -}}
{{- /* Values may arrive as json.Number strings: compare as integers, not by truthiness. */ -}}
{{- if gt (int .Values.activeDeadlineSeconds) 0 -}}
{{- int .Values.activeDeadlineSeconds -}}
{{- else -}}
{{- add (include "loadtest.runSeconds" . | int) .Values.master.holdSeconds .Values.master.expectWorkersMaxWaitSeconds 900 -}}
{{- end -}}
{{- end -}}

{{/* Paths --------------------------------------------------------------------------------- */}}

{{- define "loadtest.reportDir" -}}
{{- printf "/reports/%s-r%d" .Release.Name (int .Release.Revision) -}}
{{- end -}}

{{- define "loadtest.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{/* The pod parts both Jobs share --------------------------------------------------------- */}}

{{- define "loadtest.podCommon" -}}
serviceAccountName: {{ include "loadtest.fullname" . }}
automountServiceAccountToken: false
enableServiceLinks: false
hostNetwork: false
hostPID: false
hostIPC: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "loadtest.env" -}}
- name: HOME
  value: /tmp
# The phiserve_load package beside the locustfile (locust puts the locustfile's folder on the
# path only while importing it; the report imports modules later).
- name: PYTHONPATH
  value: /opt/loadtest
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- if .Values.target.caSecret.name }}
# Python's default TLS context (urllib and locust's client) trusts this bundle.
- name: SSL_CERT_FILE
  value: /etc/phiserve-loadtest/ca/{{ .Values.target.caSecret.key }}
{{- end }}
{{- end -}}

{{- define "loadtest.mounts" -}}
- name: code
  mountPath: /opt/loadtest
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.auth.existingSecret }}
- name: token
  mountPath: /var/run/secrets/phiserve-loadtest
  readOnly: true
{{- end }}
{{- if .Values.target.caSecret.name }}
- name: ca
  mountPath: /etc/phiserve-loadtest/ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "loadtest.volumes" -}}
- name: code
  configMap:
    name: {{ include "loadtest.fullname" . }}-code
    items:
      - key: locustfile.py
        path: locustfile.py
      {{- range $path, $_ := .Files.Glob "files/phiserve_load/*.py" }}
      - key: {{ printf "phiserve_load.%s" (base $path) }}
        path: {{ printf "phiserve_load/%s" (base $path) }}
      {{- end }}
      {{- if include "loadtest.sloEnabled" . }}
      - key: slo.json
        path: slo.json
      {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.auth.existingSecret }}
- name: token
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.key }}
        path: token
{{- end }}
{{- if .Values.target.caSecret.name }}
- name: ca
  secret:
    secretName: {{ .Values.target.caSecret.name }}
    defaultMode: 0444
    items:
      - key: {{ .Values.target.caSecret.key }}
        path: {{ .Values.target.caSecret.key }}
{{- end }}
{{- end -}}

{{/* "true" when any SLO threshold is set (slo: null or empty maps turn the gate off). */}}
{{- define "loadtest.sloEnabled" -}}
{{- $slo := .Values.slo | default dict -}}
{{- if or (dig "default" dict $slo) (dig "models" dict $slo) -}}true{{- end -}}
{{- end -}}

{{/* checkov renders charts without a namespace ("default") and with the default values. */}}
{{- define "loadtest.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_21=Rendered into the release namespace (helm -n <namespace>); checkov renders the chart without one, so it sees the default namespace.
{{- end -}}

{{- define "loadtest.checkovImageSkip" -}}
{{- if not .Values.image.digest }}
checkov.io/skip2: CKV_K8S_43=Pin the locust image by digest with image.digest; the default is a versioned tag of the public image because its digest depends on the registry mirror an operator uses.
{{- end }}
{{- end -}}
