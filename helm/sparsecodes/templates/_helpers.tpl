{{/* Names, labels and the cross-field checks shared by every template. */}}

{{- define "sparsecodes.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "sparsecodes.fullname" -}}
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

{{- define "sparsecodes.redisName" -}}
{{- printf "%s-redis" (include "sparsecodes.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sparsecodes.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sparsecodes
{{- end }}

{{/* Selector labels carry the component, so the API Service never selects the bundled Redis pod. */}}
{{- define "sparsecodes.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sparsecodes.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: api
{{- end }}

{{- define "sparsecodes.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sparsecodes.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "sparsecodes.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sparsecodes.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The API image: the GPU image when gpu.enabled; tags default to the chart's appVersion. */}}
{{- define "sparsecodes.image" -}}
{{- $image := ternary .Values.gpu.image .Values.image .Values.gpu.enabled }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "sparsecodes.modelsImage" -}}
{{- printf "%s:%s" .Values.models.image.repository (default .Chart.AppVersion .Values.models.image.tag) }}
{{- end }}

{{/* The Secret the chart creates: API keys and an external Redis URL given as values. */}}
{{- define "sparsecodes.secretName" -}}
{{- include "sparsecodes.fullname" . }}
{{- end }}

{{- define "sparsecodes.chartSecretHasKeys" -}}
{{- if .Values.auth.apiKeys }}true{{ end }}
{{- end }}

{{- define "sparsecodes.chartSecretHasRedisUrl" -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.existingSecret) }}true{{ end }}
{{- end }}

{{/* Cross-field checks that a JSON schema cannot say clearly; each names the values to fix. */}}
{{- define "sparsecodes.validate" -}}
{{- $v := .Values }}
{{- if and $v.auth.apiKeys $v.auth.existingSecret }}
{{- fail "auth: set either auth.apiKeys or auth.existingSecret, not both" }}
{{- end }}
{{- if eq $v.redis.mode "external" }}
{{- if not (or $v.redis.external.url $v.redis.external.existingSecret) }}
{{- fail "redis.mode=external needs redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if and $v.redis.external.url $v.redis.external.existingSecret }}
{{- fail "redis.external: set either url or existingSecret, not both" }}
{{- end }}
{{- end }}
{{- if and (eq $v.models.source "pvc") (not $v.models.pvc.claimName) }}
{{- fail "models.source=pvc needs models.pvc.claimName (an existing PersistentVolumeClaim)" }}
{{- end }}
{{- if and (eq $v.models.source "initContainer") (not $v.models.initContainer.image) }}
{{- fail "models.source=initContainer needs models.initContainer.image" }}
{{- end }}
{{- $needed := addf $v.shutdown.preStopSleepSeconds $v.config.gracefulTimeoutS }}
{{- if lt (float64 $v.shutdown.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds=%v is shorter than shutdown.preStopSleepSeconds + config.gracefulTimeoutS = %v: in-flight requests would be killed mid-drain" $v.shutdown.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas=%v is greater than autoscaling.maxReplicas=%v" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $v.autoscaling.enabled (not (or $v.autoscaling.targetCPUUtilizationPercentage $v.autoscaling.targetMemoryUtilizationPercentage $v.autoscaling.targetInFlightRequests)) }}
{{- fail "autoscaling.enabled needs at least one target: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or targetInFlightRequests" }}
{{- end }}
{{- end }}
