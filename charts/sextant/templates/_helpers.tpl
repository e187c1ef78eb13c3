{{/* Resource name prefix: the release name, or "sextant" when the release is called sextant. */}}
{{- define "sextant.fullname" -}}
{{- if contains "sextant" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sextant" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sextant.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sextant
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "sextant.selector" (list . "agent") */}}
{{- define "sextant.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: sextant-{{ index . 1 }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- end -}}

{{- define "sextant.componentLabels" -}}
{{ include "sextant.labels" (index . 0) }}
{{ include "sextant.selector" . }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "sextant.image" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s/%s:%s" $ctx.Values.image.repository (index . 1) (default $ctx.Chart.AppVersion $ctx.Values.image.tag) -}}
{{- end -}}

{{- define "sextant.operatorEnabled" -}}
{{- if .Values.operator.enabled -}}true{{- end -}}
{{- end -}}

{{- define "sextant.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Container security context of components that need no privilege at all. */}}
{{- define "sextant.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sextant.webhookService" -}}
{{ include "sextant.fullname" . }}-webhook
{{- end -}}

{{/* A map as `k=v,k2=v2` (the operator's tag flags). */}}
{{- define "sextant.kvList" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* key=value,key=value from a label map (sorted keys). */}}
{{- define "sextant.labelList" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
