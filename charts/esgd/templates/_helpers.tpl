{{/* Names and labels. */}}
{{- define "esgd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "esgd.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "esgd.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pod Security Standard "restricted": the same contexts as the Workflow pods (workflows/pods.py). */}}
{{- define "esgd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "esgd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Placement and resources of a controller-like pod: settings.controller. */}}
{{- define "esgd.controllerPlacement" -}}
{{- $c := .Values.settings.controller -}}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $c.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.settings.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "esgd.controllerResources" -}}
requests:
  cpu: {{ .Values.settings.controller.cpu | quote }}
  memory: {{ .Values.settings.controller.memory | quote }}
limits:
  memory: {{ .Values.settings.controller.memory | quote }}
{{- end -}}

{{/* A container of the esgd image running as the controller: image, env from the S3 Secret (none
when settings.s3Secret is null: the service account's own credentials, IRSA or workload identity). */}}
{{- define "esgd.controllerContainer" -}}
image: {{ .Values.settings.image | quote }}
imagePullPolicy: {{ .Values.settings.imagePullPolicy }}
{{- with .Values.settings.s3Secret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
resources:
  {{- include "esgd.controllerResources" . | nindent 2 }}
securityContext:
  {{- include "esgd.containerSecurityContext" . | nindent 2 }}
{{- end -}}

{{- define "esgd.settingsConfigMap" -}}
{{ include "esgd.fullname" . }}-settings
{{- end -}}
