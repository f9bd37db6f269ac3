// One Container App: image from the registry through the managed identity, secrets from Key Vault,
// optional ingress, probes and scale rules. Every role of the platform is one of these.

param name string
param location string
param tags object
param environmentId string
param identityId string
param registryServer string
param image string
param command array = []
param args array = []
@description('Environment variables: { name, value } or { name, secretRef }.')
param env array
@description('Key Vault secrets the env refers to: { name, keyVaultUrl }.')
param keyVaultSecrets array = []
@description('Port the container listens on; 0: no ingress.')
param targetPort int = 0
param external bool = false
@allowed(['auto', 'http', 'http2'])
param transport string = 'auto'
param allowInsecure bool = false
@description('CIDR ranges allowed to reach the ingress; empty: no restriction.')
param allowedIpRanges array = []
param probes array = []
param cpu string = '0.5'
param memory string = '1Gi'
param minReplicas int = 1
param maxReplicas int = 1
param scaleRules array = []
@allowed(['Single', 'Multiple'])
param revisionsMode string = 'Single'
param revisionSuffix string = ''
@description('Traffic split over revisions (Multiple mode); empty: all to the latest revision.')
param traffic array = []
@description('Azure Files volumes: { name, storageName, mountPath } (the environment storage sets the access mode).')
param fileVolumes array = []

var ingress = (targetPort == 0) ? null : {
  external: external
  targetPort: targetPort
  transport: transport
  allowInsecure: allowInsecure
  traffic: empty(traffic) ? [
    {
      latestRevision: true
      weight: 100
    }
  ] : traffic
  ipSecurityRestrictions: [for (range, i) in allowedIpRanges: {
    name: 'allow-${i}'
    action: 'Allow'
    ipAddressRange: range
  }]
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
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
      activeRevisionsMode: revisionsMode
      maxInactiveRevisions: 5
      ingress: ingress
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
      revisionSuffix: empty(revisionSuffix) ? null : revisionSuffix
      containers: [
        {
          name: 'main'
          image: image
          command: empty(command) ? null : command
          args: empty(args) ? null : args
          env: env
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          probes: probes
          volumeMounts: [for v in fileVolumes: {
            volumeName: v.name
            mountPath: v.mountPath
          }]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: scaleRules
      }
      volumes: [for v in fileVolumes: {
        name: v.name
        storageType: 'AzureFile'
        storageName: v.storageName
        // the images run as uid/gid 10001
        mountOptions: 'uid=10001,gid=10001'
      }]
    }
  }
}

output name string = app.name
output fqdn string = (targetPort == 0) ? '' : app.properties.configuration.ingress.fqdn
output latestRevisionName string = app.properties.latestRevisionName
