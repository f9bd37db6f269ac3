// The pipeline's run worker: a Container Apps job that runs `python -m recsys_assets pipeline` on a
// schedule (and on demand: `az containerapp job start`), recorded in the same Dagster instance.

param name string
param location string
param tags object
param environmentId string
param identityId string
param registryServer string
param image string
param command array
param env array
param keyVaultSecrets array
param cronExpression string
param cpu string = '4.0'
param memory string = '8Gi'
@description('Longest run in seconds before the replica is stopped.')
param timeoutSeconds int = 14400
param fileVolumes array = []

resource job 'Microsoft.App/jobs@2024-03-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      triggerType: 'Schedule'
      replicaTimeout: timeoutSeconds
      replicaRetryLimit: 0
      scheduleTriggerConfig: {
        cronExpression: cronExpression
        parallelism: 1
        replicaCompletionCount: 1
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      secrets: [for s in keyVaultSecrets: {
        name: s.name
        keyVaultUrl: s.keyVaultUrl
        identity: identityId
      }]
    }
    template: {
      containers: [
        {
          name: 'main'
          image: image
          command: command
          env: env
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          volumeMounts: [for v in fileVolumes: {
            volumeName: v.name
            mountPath: v.mountPath
          }]
        }
      ]
      volumes: [for v in fileVolumes: {
        name: v.name
        storageType: 'AzureFile'
        storageName: v.storageName
        mountOptions: 'uid=10001,gid=10001'
      }]
    }
  }
}

output name string = job.name
